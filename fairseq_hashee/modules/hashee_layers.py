"""fairseq's Transformer layers, extended with a forward over active tokens only.

The classes subclass fairseq's own layers, so parameters, names and the stock
``forward`` (used as the masked reference path) are fairseq's. ``forward_active``
gathers the positions a layer still updates, runs the query side of attention,
the norms and the feed-forward block on them alone, and scatters the results
back; frozen positions keep their state and still serve as keys and values.
"""

from typing import Dict, Optional, Tuple

import torch
from fairseq.modules.transformer_layer import (
    TransformerDecoderLayerBase,
    TransformerEncoderLayerBase,
)
from torch import Tensor

from .active_attention import attend_active, project_kv
from .active_tokens import ActiveTokens, LayerPlan, Plan
from .gathered_linear import gathered_linear

IncrementalState = Dict[str, Dict[str, Optional[Tensor]]]


class _ActiveSublayers:
    """Residual wrappers shared by the encoder and decoder layers (pre- or post-LN)."""

    def _close_residual(self, update: Tensor, residual: Tensor, layer_norm) -> Tensor:
        out = self.residual_connection(self.dropout_module(update), residual)
        return out if self.normalize_before else layer_norm(out)

    def _feed_forward(self, h: Tensor) -> Tensor:
        residual = h
        if self.normalize_before:
            h = self.final_layer_norm(h)
        h = self.activation_dropout_module(self.activation_fn(gathered_linear(self.fc1, h)))
        return self._close_residual(gathered_linear(self.fc2, h), residual, self.final_layer_norm)

    def _attention_input(self, x: Tensor, layer_norm) -> Tensor:
        return layer_norm(x) if self.normalize_before else x


def _take_rows(t: Optional[Tensor], rows: Optional[Tensor]) -> Optional[Tensor]:
    return t if t is None or rows is None else t.index_select(0, rows)


def _cat_padding(
    old: Optional[Tensor], old_len: int, new: Optional[Tensor], new_len: int, bsz: int
) -> Optional[Tensor]:
    """Append key-padding masks (B, len) where either side may be None (= no padding);
    fairseq's attention may have cached one as floats, so both become bool."""
    if old is None and new is None:
        return None
    device = (old if old is not None else new).device
    old = torch.zeros(bsz, old_len, dtype=torch.bool, device=device) if old is None else old.bool()
    new = torch.zeros(bsz, new_len, dtype=torch.bool, device=device) if new is None else new.bool()
    return torch.cat([old, new], dim=1)


class HashEEEncoderLayer(_ActiveSublayers, TransformerEncoderLayerBase):
    def forward_active(
        self, x: Tensor, padding_mask: Optional[Tensor], sel: ActiveTokens, in_place: bool = False
    ) -> Tensor:
        """Update the ``sel`` positions of time-major ``x`` (T, B, C).

        ``in_place`` writes the updates into ``x`` itself instead of a copy:
        for inference, when nothing else holds on to ``x``.
        """
        dim = x.size(-1)
        rows = None if sel.all_rows else sel.row_ids
        # Keys and values come from every position of the rows that have a query.
        kv_in = self._attention_input(x, self.self_attn_layer_norm)
        keys, values = project_kv(self.self_attn, kv_in if rows is None else kv_in.index_select(1, rows))

        residual = x.reshape(-1, dim).index_select(0, sel.flat)
        query = kv_in.reshape(-1, dim).index_select(0, sel.flat)
        attn = attend_active(
            self.self_attn, query, keys, values, sel, _take_rows(padding_mask, rows)
        )
        h = self._close_residual(attn, residual, self.self_attn_layer_norm)
        h = self._feed_forward(h)
        if in_place:
            x.view(-1, dim).index_copy_(0, sel.flat, h)
            return x
        return x.reshape(-1, dim).index_copy(0, sel.flat, h).view_as(x)


class HashEEDecoderLayer(_ActiveSublayers, TransformerDecoderLayerBase):
    """Decoder layer: teacher-forced over active positions, or one incremental step.

    The self-attention cache lives in fairseq's ``MultiheadAttention`` buffer
    layout (``prev_key``/``prev_value`` as (B, heads, S, head_dim)), so fairseq's
    ``reorder_incremental_state`` reorders it for beam search and the stock
    layer can extend it. When a step has no active position at this layer, the
    layer's inputs for that step wait in the buffer as ``pending_input``
    (B, P, C) instead of being projected; the next step with an active query
    projects all of them in one product. Every key a query reads is thus the
    key of that position's input to this layer: its frozen state if it exited
    below (the KV-cache invariant of DESIGN.md section 1).
    """

    def forward_active(
        self,
        x: Tensor,
        sel: ActiveTokens,
        encoder_out: Optional[Tensor],
        encoder_padding_mask: Optional[Tensor],
        self_attn_padding_mask: Optional[Tensor],
    ) -> Tensor:
        """Teacher-forced: update the ``sel`` positions of ``x`` (T, B, C)."""
        kv_in = self._attention_input(x, self.self_attn_layer_norm)
        keys, values = project_kv(self.self_attn, kv_in)
        return self._update_active(
            x, kv_in, sel, keys, values, self_attn_padding_mask, encoder_out, encoder_padding_mask, None
        )

    def forward_step(
        self,
        x: Tensor,
        plan: LayerPlan,
        encoder_out: Optional[Tensor],
        encoder_padding_mask: Optional[Tensor],
        incremental_state: IncrementalState,
        self_attn_padding_mask: Optional[Tensor],
    ) -> Tensor:
        """Incremental: ``x`` (1, B, C) holds the new position of every row."""
        kv_in = self._attention_input(x, self.self_attn_layer_norm)
        buffer = self.self_attn._get_input_buffer(incremental_state)
        if plan is Plan.SKIP:
            self._defer(buffer, kv_in, self_attn_padding_mask)
            self.self_attn._set_input_buffer(incremental_state, buffer)
            return x
        if plan is Plan.EVERY:
            # Bring the cache up to date, then let fairseq's own layer add this step.
            self._flush(buffer, None, None)
            self.self_attn._set_input_buffer(incremental_state, buffer)
            out, _, _ = self(
                x, encoder_out, encoder_padding_mask, incremental_state,
                self_attn_padding_mask=self_attn_padding_mask,
            )
            return out
        keys, values, key_pad = self._flush(buffer, kv_in, self_attn_padding_mask)
        self.self_attn._set_input_buffer(incremental_state, buffer)
        return self._update_active(
            x, kv_in, plan, keys, values, key_pad, encoder_out, encoder_padding_mask, incremental_state
        )

    def _update_active(
        self,
        x: Tensor,
        kv_in: Tensor,
        sel: ActiveTokens,
        keys: Tensor,
        values: Tensor,
        key_pad: Optional[Tensor],
        encoder_out: Optional[Tensor],
        encoder_padding_mask: Optional[Tensor],
        incremental_state: Optional[IncrementalState],
    ) -> Tensor:
        """Self-attention, cross-attention and feed-forward for the ``sel`` positions."""
        dim = x.size(-1)
        rows = None if sel.all_rows else sel.row_ids
        past_len = keys.size(2) - x.size(0)
        residual = x.reshape(-1, dim).index_select(0, sel.flat)
        query = kv_in.reshape(-1, dim).index_select(0, sel.flat)
        attn = attend_active(
            self.self_attn,
            query,
            _take_rows(keys, rows),
            _take_rows(values, rows),
            sel,
            _take_rows(key_pad, rows),
            query_positions=sel.times + past_len,
        )
        h = self._close_residual(attn, residual, self.self_attn_layer_norm)

        if self.encoder_attn is not None and encoder_out is not None:
            enc_keys, enc_values, enc_pad = self._encoder_kv(
                encoder_out, encoder_padding_mask, incremental_state, x.size(1)
            )
            enc_rows = self._encoder_rows(sel, x.size(1), enc_keys.size(0))
            residual = h
            query = self._attention_input(h, self.encoder_attn_layer_norm)
            attn = attend_active(
                self.encoder_attn,
                query,
                _take_rows(enc_keys, enc_rows),
                _take_rows(enc_values, enc_rows),
                sel,
                _take_rows(enc_pad, enc_rows),
            )
            h = self._close_residual(attn, residual, self.encoder_attn_layer_norm)

        h = self._feed_forward(h)
        return x.reshape(-1, dim).index_copy(0, sel.flat, h).view_as(x)

    @staticmethod
    def _defer(buffer: Dict[str, Optional[Tensor]], kv_in: Tensor, pad: Optional[Tensor]) -> None:
        """Keep this step's layer inputs (and padding) to project later."""
        new = kv_in.transpose(0, 1)  # (B, 1, C)
        pending = buffer.get("pending_input")
        past = 0 if pending is None else pending.size(1)
        buffer["pending_padding_mask"] = _cat_padding(buffer.get("pending_padding_mask"), past, pad, 1, new.size(0))
        buffer["pending_input"] = new if pending is None else torch.cat([pending, new], dim=1)

    def _flush(
        self, buffer: Dict[str, Optional[Tensor]], kv_in: Optional[Tensor], pad: Optional[Tensor]
    ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """Project the pending inputs (and ``kv_in``, if given) in one product and
        append them to the cache; returns the whole cache."""
        if kv_in is not None:
            self._defer(buffer, kv_in, pad)
        pending = buffer.pop("pending_input", None)
        pending_pad = buffer.pop("pending_padding_mask", None)
        if pending is None:
            return buffer.get("prev_key"), buffer.get("prev_value"), buffer.get("prev_key_padding_mask")
        keys, values = project_kv(self.self_attn, pending, batch_first=True)
        past = 0
        if "prev_key" in buffer:
            past = buffer["prev_key"].size(2)
            keys = torch.cat([buffer["prev_key"], keys], dim=2)
            values = torch.cat([buffer["prev_value"], values], dim=2)
        key_pad = _cat_padding(buffer.get("prev_key_padding_mask"), past, pending_pad, pending.size(1), pending.size(0))
        buffer["prev_key"], buffer["prev_value"], buffer["prev_key_padding_mask"] = keys, values, key_pad
        return keys, values, key_pad

    def _encoder_kv(
        self,
        encoder_out: Tensor,
        encoder_padding_mask: Optional[Tensor],
        incremental_state: Optional[IncrementalState],
        num_rows: int,
    ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """Cross-attention keys/values, projected once per generation and cached.

        With fairseq's beamable attention (``set_beam_size``) the cache holds
        one row per sentence rather than one per hypothesis, as in stock BART.
        """
        if incremental_state is None:
            keys, values = project_kv(self.encoder_attn, encoder_out)
            return keys, values, encoder_padding_mask
        buffer = self.encoder_attn._get_input_buffer(incremental_state)
        if "prev_key" not in buffer:
            beam = self.encoder_attn.beam_size
            if beam > 1 and encoder_out.size(1) == num_rows:
                encoder_out = encoder_out[:, ::beam]
                if encoder_padding_mask is not None:
                    encoder_padding_mask = encoder_padding_mask[::beam]
            buffer["prev_key"], buffer["prev_value"] = project_kv(
                self.encoder_attn, encoder_out
            )
            buffer["prev_key_padding_mask"] = encoder_padding_mask
            self.encoder_attn._set_input_buffer(incremental_state, buffer)
        return buffer["prev_key"], buffer["prev_value"], buffer.get("prev_key_padding_mask")

    @staticmethod
    def _encoder_rows(sel: ActiveTokens, num_rows: int, num_enc_rows: int) -> Optional[Tensor]:
        """Map decoder rows with a query to rows of the cross-attention cache."""
        if num_enc_rows == num_rows:
            return None if sel.all_rows else sel.row_ids
        return torch.div(sel.row_ids, num_rows // num_enc_rows, rounding_mode="floor")
