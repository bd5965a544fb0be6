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
from .active_tokens import ActiveTokens

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
        h = self.activation_dropout_module(self.activation_fn(self.fc1(h)))
        return self._close_residual(self.fc2(h), residual, self.final_layer_norm)

    def _attention_input(self, x: Tensor, layer_norm) -> Tensor:
        return layer_norm(x) if self.normalize_before else x


def _take_rows(t: Optional[Tensor], rows: Optional[Tensor]) -> Optional[Tensor]:
    return t if t is None or rows is None else t.index_select(0, rows)


class HashEEEncoderLayer(_ActiveSublayers, TransformerEncoderLayerBase):
    def forward_active(
        self, x: Tensor, padding_mask: Optional[Tensor], sel: ActiveTokens
    ) -> Tensor:
        """Update the ``sel`` positions of time-major ``x`` (T, B, C)."""
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
        return x.reshape(-1, dim).index_copy(0, sel.flat, h).view_as(x)


class HashEEDecoderLayer(_ActiveSublayers, TransformerDecoderLayerBase):
    def forward_active(
        self,
        x: Tensor,
        sel: Optional[ActiveTokens],
        encoder_out: Optional[Tensor],
        encoder_padding_mask: Optional[Tensor],
        incremental_state: Optional[IncrementalState],
        self_attn_padding_mask: Optional[Tensor],
    ) -> Tensor:
        """Update the ``sel`` positions of the new decoder states ``x`` (Tn, B, C).

        Whatever ``sel`` holds, this layer's self-attention keys and values are
        projected for every new position and appended to the cache: the input
        of this layer for a position that exited below it is its frozen state,
        which is exactly ``x`` (the KV-cache invariant of DESIGN.md section 1).
        """
        kv_in = self._attention_input(x, self.self_attn_layer_norm)
        keys, values = project_kv(self.self_attn, kv_in)
        keys, values, key_pad = self._extend_self_cache(
            keys, values, self_attn_padding_mask, incremental_state
        )
        if sel is None:
            return x

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

    def _extend_self_cache(
        self,
        keys: Tensor,
        values: Tensor,
        key_pad: Optional[Tensor],
        incremental_state: Optional[IncrementalState],
    ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """Append this step's keys/values to the cache, in fairseq's buffer layout.

        The layout is the one ``MultiheadAttention`` uses, so its
        ``reorder_incremental_state`` reorders our cache for beam search.
        """
        if incremental_state is None:
            return keys, values, key_pad
        buffer = self.self_attn._get_input_buffer(incremental_state)
        if "prev_key" in buffer:
            prev_pad = buffer.get("prev_key_padding_mask")
            past_len = buffer["prev_key"].size(2)
            keys = torch.cat([buffer["prev_key"], keys], dim=2)
            values = torch.cat([buffer["prev_value"], values], dim=2)
            if prev_pad is not None or key_pad is not None:
                bsz, new_len = keys.size(0), keys.size(2) - past_len
                if prev_pad is None:
                    prev_pad = key_pad.new_zeros(bsz, past_len)
                if key_pad is None:
                    key_pad = prev_pad.new_zeros(bsz, new_len)
                key_pad = torch.cat([prev_pad, key_pad], dim=1)
        buffer["prev_key"] = keys
        buffer["prev_value"] = values
        buffer["prev_key_padding_mask"] = key_pad
        self.self_attn._set_input_buffer(incremental_state, buffer)
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
