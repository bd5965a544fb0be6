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
from .kv_cache import IncrementalState, SelfAttentionCache, cross_attention_kv
from .layer_plan import ActivePositions, LayerPlan, Plan, grouped_by_source


class LayerInputs(NamedTuple):
    """What every layer of one stack forward reads besides the states ``x`` (T, B, C)."""

    padding_mask: Optional[Tensor]  # (B, T) True at padding among this call's positions; None: none
    encoder_out: Optional[Tensor] = None  # (S, B, C), decoder only
    encoder_padding_mask: Optional[Tensor] = None  # (B, S)
    incremental_state: Optional[IncrementalState] = None  # decoder, one step at a time
    self_cache: Optional[SelfAttentionCache] = None  # decoder, one step at a time, skip path
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

    Incrementally (``inputs.self_cache``, modules/kv_cache.py) every step's
    input to this layer reaches the cache: deferred when the step has no
    active position here, projected when a step needs keys. Every key a query
    reads is thus projected from that position's input to this layer, its
    frozen state if it exited below (the KV-cache invariant, docs/design.md
    section 4). A step with every row active runs the same path, so the cache
    never needs fairseq's own layout.
    """

    def forward_plan(self, x: Tensor, plan: LayerPlan, inputs: LayerInputs) -> Tensor:
        cache = inputs.self_cache
        if cache is None:
            return super().forward_plan(x, plan, inputs)
        kv_in = self._attention_input(x, self.self_attn_layer_norm)
        if plan is Plan.SKIP:
            cache.defer(self.self_attn, kv_in)
            return x
        if plan is Plan.EVERY:
            plan = cache.every_row()
        rows = None if plan.all_rows else plan.rows
        keys, values, key_pad = cache.keys_values(self.self_attn, kv_in, rows)
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
        rows = None if plan.all_rows else plan.rows
        kv_in = self._attention_input(x, self.self_attn_layer_norm)
        keys, values = project_kv(self.self_attn, kv_in if rows is None else kv_in.index_select(1, rows))
        return self._update_active(x, kv_in, plan, keys, values, _take_rows(inputs.padding_mask, rows), inputs)

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
        ``keys``/``values`` (len(plan.rows), heads, S, head_dim) end with this call's positions."""
        num_rows, new_len = x.size(1), x.size(0)
        rows = None if plan.all_rows else plan.rows
        attn = attend_active(
            self.self_attn,
            self._gather(kv_in, plan),
            keys,
            values,
            plan,
            key_pad,
            # One new position per row sees every key: no causal mask needed.
            query_positions=plan.time + (keys.size(2) - new_len) if new_len > 1 else None,
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
            if enc_keys.size(0) == num_rows:
                enc_plan = plan
                enc_keys, enc_values, enc_pad = (_take_rows(t, rows) for t in (enc_keys, enc_values, enc_pad))
            else:  # fairseq's beamable cache: one row per sentence
                enc_plan = grouped_by_source(plan, enc_keys.size(0))
            residual = h
            attn = attend_active(
                self.encoder_attn,
                self._attention_input(h, self.encoder_attn_layer_norm),
                enc_keys,
                enc_values,
                enc_plan,
                enc_pad,
            )
            h = self._close_residual(attn, residual, self.encoder_attn_layer_norm)

        return _scatter(x, plan, self._feed_forward(h), in_place=False)
