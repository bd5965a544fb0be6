"""fairseq's Transformer layers, extended to run a layer plan (docs/design.md section 3).

The classes subclass fairseq's own layers, so parameters, names and the stock
``forward`` are fairseq's. Both layer types have one entry point,
``forward_plan(x, plan, inputs)``: no work for ``Plan.SKIP``, fairseq's own
layer for ``Plan.EVERY``, and for ``ActivePositions`` a forward that gathers
the positions the layer still updates, runs the query side of attention, the
norms and the feed-forward block on them alone, and scatters the results
back; frozen positions keep their state and still serve as keys and values.
"""

from typing import NamedTuple, Optional

from fairseq.modules.transformer_layer import (
    TransformerDecoderLayerBase,
    TransformerEncoderLayerBase,
)
from torch import Tensor

from .active_attention import attend_active, project_kv
from .few_rows_linear import few_rows_linear
from .kv_cache import IncrementalState, SelfAttentionCache, cross_attention_kv, source_rows
from .layer_plan import ActivePositions, LayerPlan, Plan


class LayerInputs(NamedTuple):
    """What every layer of one stack forward reads besides the states ``x`` (T, B, C)."""

    padding_mask: Optional[Tensor]  # (B, T) True at padding among this call's positions; None: none
    encoder_out: Optional[Tensor] = None  # (S, B, C), decoder only
    encoder_padding_mask: Optional[Tensor] = None  # (B, S)
    incremental_state: Optional[IncrementalState] = None  # decoder, one step at a time
    self_attn_mask: Optional[Tensor] = None  # decoder, teacher-forced: the causal (future) mask
    in_place: bool = False  # updates may be written into ``x`` itself (nothing else holds it)


def _take_rows(t: Optional[Tensor], rows: Optional[Tensor]) -> Optional[Tensor]:
    return t if t is None or rows is None else t.index_select(0, rows)


def _scatter(x: Tensor, plan: ActivePositions, updated: Tensor, in_place: bool) -> Tensor:
    """``x`` with the plan's positions replaced by ``updated`` (N, C)."""
    if in_place:
        x.view(-1, x.size(-1)).index_copy_(0, plan.flat, updated)
        return x
    return x.reshape(-1, x.size(-1)).index_copy(0, plan.flat, updated).view_as(x)


class _PlannedLayer:
    """The plan dispatch and residual sublayers shared by both layer types (pre- or post-LN)."""

    def forward_plan(self, x: Tensor, plan: LayerPlan, inputs: LayerInputs) -> Tensor:
        """The layer's output states (T, B, C) under ``plan``."""
        if plan is Plan.SKIP:
            return x
        if plan is Plan.EVERY:
            return self.forward_stock(x, inputs)
        return self.forward_active(x, plan, inputs)

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

    @staticmethod
    def _gather(x: Tensor, plan: ActivePositions) -> Tensor:
        return x.reshape(-1, x.size(-1)).index_select(0, plan.flat)


class HashEEEncoderLayer(_PlannedLayer, TransformerEncoderLayerBase):
    def forward_stock(self, x: Tensor, inputs: LayerInputs) -> Tensor:
        return self(x, encoder_padding_mask=inputs.padding_mask)

    def forward_active(self, x: Tensor, plan: ActivePositions, inputs: LayerInputs) -> Tensor:
        rows = None if plan.all_rows else plan.rows
        # Keys and values come from every position of the rows that have a query.
        kv_in = self._attention_input(x, self.self_attn_layer_norm)
        keys, values = project_kv(self.self_attn, kv_in if rows is None else kv_in.index_select(1, rows))
        attn = attend_active(
            self.self_attn, self._gather(kv_in, plan), keys, values, plan, _take_rows(inputs.padding_mask, rows)
        )
        h = self._close_residual(attn, self._gather(x, plan), self.self_attn_layer_norm)
        return _scatter(x, plan, self._feed_forward(h), inputs.in_place)


class HashEEDecoderLayer(_PlannedLayer, TransformerDecoderLayerBase):
    """Decoder layer: teacher-forced over the plan's positions, or one incremental step.

    Incrementally, the self-attention cache (modules/kv_cache.py) receives
    every step's input to this layer: deferred when the step has no active
    position here, projected when a step needs keys. Every key a query reads
    is thus projected from that position's input to this layer, its frozen
    state if it exited below (the KV-cache invariant, docs/design.md section 4).
    """

    def forward_plan(self, x: Tensor, plan: LayerPlan, inputs: LayerInputs) -> Tensor:
        if inputs.incremental_state is None:
            return super().forward_plan(x, plan, inputs)
        cache = SelfAttentionCache(self.self_attn, inputs.incremental_state)
        if plan is Plan.SKIP:
            cache.defer(self._attention_input(x, self.self_attn_layer_norm), inputs.padding_mask)
            return x
        if plan is Plan.EVERY:
            if cache.has_pending:
                # fairseq's layer appends this step to a cache that must be whole.
                cache.keys_values()
            return self.forward_stock(x, inputs)
        kv_in = self._attention_input(x, self.self_attn_layer_norm)
        keys, values, key_pad = cache.keys_values(kv_in, inputs.padding_mask)
        return self._update_active(x, kv_in, plan, keys, values, key_pad, inputs)

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

    def forward_active(self, x: Tensor, plan: ActivePositions, inputs: LayerInputs) -> Tensor:
        kv_in = self._attention_input(x, self.self_attn_layer_norm)
        keys, values = project_kv(self.self_attn, kv_in)
        return self._update_active(x, kv_in, plan, keys, values, inputs.padding_mask, inputs)

    def _update_active(
        self,
        x: Tensor,
        kv_in: Tensor,
        plan: ActivePositions,
        keys: Tensor,
        values: Tensor,
        key_pad: Optional[Tensor],
        inputs: LayerInputs,
    ) -> Tensor:
        """Self-attention, cross-attention and feed-forward for the plan's positions;
        ``keys``/``values`` (B, heads, S, head_dim) end with this call's positions."""
        num_rows = x.size(1)
        rows = None if plan.all_rows else plan.rows
        past_len = keys.size(2) - x.size(0)
        attn = attend_active(
            self.self_attn,
            self._gather(kv_in, plan),
            _take_rows(keys, rows),
            _take_rows(values, rows),
            plan,
            _take_rows(key_pad, rows),
            query_positions=plan.time + past_len,
        )
        h = self._close_residual(attn, self._gather(x, plan), self.self_attn_layer_norm)

        if self.encoder_attn is not None and inputs.encoder_out is not None:
            enc_keys, enc_values, enc_pad = cross_attention_kv(
                self.encoder_attn,
                inputs.encoder_out,
                inputs.encoder_padding_mask,
                inputs.incremental_state,
                num_rows,
            )
            enc_rows = rows
            if enc_keys.size(0) != num_rows:
                enc_rows = source_rows(plan.rows, num_rows, enc_keys.size(0))
            residual = h
            attn = attend_active(
                self.encoder_attn,
                self._attention_input(h, self.encoder_attn_layer_norm),
                _take_rows(enc_keys, enc_rows),
                _take_rows(enc_values, enc_rows),
                plan,
                _take_rows(enc_pad, enc_rows),
            )
            h = self._close_residual(attn, residual, self.encoder_attn_layer_norm)

        return _scatter(x, plan, self._feed_forward(h), in_place=False)
