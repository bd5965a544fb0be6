"""fairseq's Transformer layers, extended to run a layer plan (docs/design.md section 3).

The classes subclass fairseq's own layers, so parameters, names and the stock
``forward`` are fairseq's. ``forward_plan(x, plan, inputs)`` dispatches on the
plan (modules/layer_plan.py): no work for ``Plan.SKIP``, fairseq's own layer
(``forward_stock``) for ``Plan.EVERY``, ``forward_prefix`` for a teacher-forced
``Prefix`` and, in the decoder, ``forward_step`` for an incremental step's
``StepRows``. On a prefix or a step's rows, the query side of attention, the
norms and the feed-forward block run on the first positions (rows) of the
ordered states alone, a narrow view, and are written back in place of the old
ones; frozen positions keep their state and still serve as keys and values.
"""

from typing import NamedTuple, Optional

import torch
from fairseq.modules.transformer_layer import (
    TransformerDecoderLayerBase,
    TransformerEncoderLayerBase,
)
from torch import Tensor

from .active_attention import attend, attend_grouped, project_kv
from .few_rows_linear import few_rows_linear
from .kv_cache import IncrementalState, SelfAttentionCache, SourceRows, cross_attention_kv
from .layer_plan import LayerPlan, Plan, Prefix, StepBlock, StepRows


class LayerInputs(NamedTuple):
    """What every layer of one stack forward reads besides the states ``x`` (T, B, C)."""

    padding_mask: Optional[Tensor]  # (B, T) True at padding among this call's positions; None: none
    encoder_out: Optional[Tensor] = None  # (S, B, C), decoder only
    encoder_padding_mask: Optional[Tensor] = None  # (B, S), for fairseq's own layers
    sources: Optional[SourceRows] = None  # the key rows cross-attention queries read, for the plugin's own layers
    incremental_state: Optional[IncrementalState] = None  # decoder, one step at a time
    self_cache: Optional[SelfAttentionCache] = None  # decoder, one step at a time, skip path
    self_attn_mask: Optional[Tensor] = None  # decoder, teacher-forced: the causal (future) mask
    in_place: bool = False  # updates may be written into ``x`` itself (nothing else holds it)


def _write_prefix(x: Tensor, update: Tensor, write_mask: Optional[Tensor], in_place: bool, dim: int = 0) -> Tensor:
    """``x`` with its first positions (along ``dim``) replaced by ``update`` where ``write_mask``
    (None: everywhere); the positions after them keep their states."""
    size = update.size(dim)
    old = x.narrow(dim, 0, size)
    if write_mask is not None:
        update = torch.where(write_mask, update, old)
    if in_place:
        old.copy_(update)
        return x
    if size == x.size(dim):
        return update
    return torch.cat([update, x.narrow(dim, size, x.size(dim) - size)], dim=dim)


class _PlannedLayer:
    """The plan dispatch and residual sublayers shared by both layer types (pre- or post-LN)."""

    def forward_plan(self, x: Tensor, plan: LayerPlan, inputs: LayerInputs) -> Tensor:
        """The layer's output states (T, B, C) under ``plan``."""
        if plan is Plan.SKIP:
            return x
        if plan is Plan.EVERY:
            return self.forward_stock(x, inputs)
        if isinstance(plan, StepRows):
            return self.forward_step(x, plan, inputs)
        if isinstance(plan, StepBlock):
            return self.forward_block(x, plan, inputs)
        return self.forward_prefix(x, plan, inputs)

    def _close_residual(self, update: Tensor, residual: Tensor, layer_norm) -> Tensor:
        out = self.residual_connection(self.dropout_module(update), residual)
        return out if self.normalize_before else layer_norm(out)

    def _feed_forward(self, h: Tensor) -> Tensor:
        residual = h
        if self.normalize_before:
            h = self.final_layer_norm(h)
        h = self.activation_dropout_module(self.activation_fn(few_rows_linear(self.fc1, h)))
        return self._close_residual(few_rows_linear(self.fc2, h), residual, self.final_layer_norm)

    def _attention_input(self, x: Tensor, layer_norm) -> Tensor:
        return layer_norm(x) if self.normalize_before else x

    def _self_attention(self, x: Tensor, plan: Prefix) -> Tensor:
        """Self-attention sublayer of the plan's positions (plan.size, B, C), keys from the
        first ``plan.keys`` positions of each row (exited ones included)."""
        kv_in = self._attention_input(x[: plan.keys], self.self_attn_layer_norm)
        keys, values = project_kv(self.self_attn, kv_in)
        attn = attend(self.self_attn, kv_in[: plan.size], keys, values, plan.visible)
        return self._close_residual(attn, x[: plan.size], self.self_attn_layer_norm)


class HashEEEncoderLayer(_PlannedLayer, TransformerEncoderLayerBase):
    def forward_stock(self, x: Tensor, inputs: LayerInputs) -> Tensor:
        return self(x, encoder_padding_mask=inputs.padding_mask)

    def forward_prefix(self, x: Tensor, plan: Prefix, inputs: LayerInputs) -> Tensor:
        update = self._feed_forward(self._self_attention(x, plan))
        return _write_prefix(x, update, plan.write_mask, inputs.in_place)


class HashEEDecoderLayer(_PlannedLayer, TransformerDecoderLayerBase):
    """Decoder layer: teacher-forced over a prefix of the ordered positions, or one incremental step.

    Incrementally (``forward_step``, modules/kv_cache.py) every step's input to
    this layer reaches the cache: deferred when the step has no active row
    here, projected when a step needs keys. Every key a query reads is thus
    projected from that position's input to this layer, its frozen state if it
    exited below (the KV-cache invariant, docs/design.md section 4). A step with
    every row active runs the same path, so the cache never needs fairseq's own
    layout.
    """

    def forward_stock(self, x: Tensor, inputs: LayerInputs) -> Tensor:
        out, _, _ = self(
            x,
            inputs.encoder_out,
            inputs.encoder_padding_mask,
            inputs.incremental_state,
            self_attn_mask=inputs.self_attn_mask,
            self_attn_padding_mask=inputs.padding_mask,
        )
        return out

    def forward_prefix(self, x: Tensor, plan: Prefix, inputs: LayerInputs) -> Tensor:
        h = self._cross_attention(self._self_attention(x, plan), inputs)
        return _write_prefix(x, self._feed_forward(h), plan.write_mask, in_place=False)

    def forward_step(self, x: Tensor, plan: StepRows, inputs: LayerInputs) -> Tensor:
        """One step's states (1, rows, C), ordered: the first ``plan.count`` rows are updated."""
        cache = inputs.self_cache
        kv_in = self._attention_input(x, self.self_attn_layer_norm)
        if plan.count == 0:
            cache.defer(self.self_attn, kv_in)
            return x
        keys, values, visible = cache.keys_values(self.self_attn, kv_in, plan.count)
        attn = attend(self.self_attn, kv_in[:, : plan.count], keys, values, visible)
        h = self._close_residual(attn, x[:, : plan.count], self.self_attn_layer_norm)
        h = self._cross_attention(h, inputs)
        return _write_prefix(x, self._feed_forward(h), None, in_place=False, dim=1)

    def forward_block(self, x: Tensor, plan: StepBlock, inputs: LayerInputs) -> Tensor:
        """A deep layer of a synchronized step (FREE, docs/design.md section 8): the first
        ``plan.count`` rows of ``x`` (1, rows, C) run it for this position and, in the same call, for
        the positions they left pending; the other rows' states wait in the cache."""
        block = inputs.self_cache.synchronize(x, plan.count)
        if block is None:
            return x
        kv_in = self._attention_input(block.states, self.self_attn_layer_norm)
        keys, values, visible = inputs.self_cache.block_keys_values(self.self_attn, kv_in)
        attn = attend(self.self_attn, kv_in, keys, values, visible)
        h = self._cross_attention(self._close_residual(attn, block.states, self.self_attn_layer_norm), inputs)
        block.states = self._feed_forward(h)
        return _write_prefix(x, block.states[-1:], None, in_place=False, dim=1)

    def _cross_attention(self, h: Tensor, inputs: LayerInputs) -> Tensor:
        """Cross-attention sublayer of the queries ``h`` (Tq, N, C): every row teacher-forced, a
        step's first N rows in its order incrementally (at Tq positions in a synchronized block);
        each reads its key row (``inputs.sources``)."""
        if self.encoder_attn is None or inputs.encoder_out is None:
            return h
        sources = inputs.sources
        keys, values = cross_attention_kv(
            self.encoder_attn,
            inputs.encoder_out,
            inputs.encoder_padding_mask,
            inputs.incremental_state,
            sources.num_rows,
        )
        attn = attend_grouped(
            self.encoder_attn,
            self._attention_input(h, self.encoder_attn_layer_norm),
            keys,
            values,
            sources.visible,
            sources.slots(h.size(1)),
            sources.per_group,
        )
        return self._close_residual(attn, h, self.encoder_attn_layer_norm)
