"""HashEE encoder and decoder: fairseq's Transformer stacks with per-token exits.

Each stack keeps fairseq's embeddings, layers and output layer and replaces
only the loop over layers: layer ``i`` updates the positions whose exit layer
is at least ``i`` (see modules/active_tokens.py). ``exit_impl`` picks how:

- ``skip`` plans each layer: no work where no position is active, fairseq's
  stock layer where no position has exited yet, and otherwise the active
  positions only (modules/hashee_layers.py);
- ``masked`` runs fairseq's stock layer on every position and keeps the old
  state where a position has exited: the slow reference definition.
"""

from typing import Dict, List, Optional

import torch
from fairseq.models.transformer import TransformerDecoderBase, TransformerEncoderBase
from torch import Tensor

from ..modules.active_tokens import LayerPlanner, Plan
from ..modules.exit_table import ExitTableMixin
from ..modules.flops import StackShape
from ..modules.hashee_layers import HashEEDecoderLayer, HashEEEncoderLayer


class HashEEEncoder(ExitTableMixin, TransformerEncoderBase):
    stack_name = "encoder"

    def __init__(self, cfg, dictionary, embed_tokens, exit_impl: str = "skip"):
        super().__init__(cfg, dictionary, embed_tokens)
        self._init_exit_table(dictionary, exit_impl)
        self.shape = StackShape(self.num_layers, cfg.encoder.embed_dim, cfg.encoder.ffn_embed_dim)

    def build_encoder_layer(self, cfg):
        return HashEEEncoderLayer(cfg)

    def forward_scriptable(
        self,
        src_tokens: Tensor,
        src_lengths: Optional[Tensor] = None,
        return_all_hiddens: bool = False,
        token_embeddings: Optional[Tensor] = None,
    ):
        padding_mask = src_tokens.eq(self.padding_idx)
        has_pads = bool(padding_mask.any())
        x, encoder_embedding = self.forward_embedding(src_tokens, token_embeddings)
        if has_pads:
            x = x * (1 - padding_mask.unsqueeze(-1).type_as(x))
        x = x.transpose(0, 1)
        layer_padding_mask = padding_mask if has_pads else None
        exits = self.token_exits(src_tokens)

        encoder_states: List[Tensor] = [x] if return_all_hiddens else []
        # Nothing but the loop holds on to x unless hidden states are returned or autograd needs it.
        in_place = not return_all_hiddens and not torch.is_grad_enabled()
        plan_layer = LayerPlanner(exits)
        for i, layer in enumerate(self.layers, start=1):
            if self.exit_impl == "masked":
                updated = layer(x, encoder_padding_mask=layer_padding_mask)
                x = torch.where((exits >= i).unsqueeze(-1), updated, x)
            else:
                plan = Plan.EVERY if self.no_early_exits else plan_layer(i)
                if plan is Plan.EVERY:
                    x = layer(x, encoder_padding_mask=layer_padding_mask)
                elif plan is not Plan.SKIP:
                    x = layer.forward_active(x, layer_padding_mask, plan, in_place)
            if return_all_hiddens:
                encoder_states.append(x)

        if self.layer_norm is not None:
            x = self.layer_norm(x)
        if self.speedup_meter is not None:
            self.speedup_meter.add_encoder(self.shape, exits.t())

        return {
            "encoder_out": [x],  # T x B x C
            "encoder_padding_mask": [padding_mask],  # B x T
            "encoder_embedding": [encoder_embedding],  # B x T x C
            "encoder_states": encoder_states,  # List[T x B x C]
            "fc_results": [],
            "src_tokens": [],
            "src_lengths": [(~padding_mask).sum(dim=1, dtype=torch.int32).reshape(-1, 1)],
        }


class HashEEDecoder(ExitTableMixin, TransformerDecoderBase):
    """Exit layer of position t = table[prev_output_tokens[t]], known before t is computed."""

    stack_name = "decoder"

    def __init__(
        self,
        cfg,
        dictionary,
        embed_tokens,
        no_encoder_attn: bool = False,
        output_projection=None,
        exit_impl: str = "skip",
    ):
        super().__init__(cfg, dictionary, embed_tokens, no_encoder_attn, output_projection)
        self._init_exit_table(dictionary, exit_impl)
        self.shape = StackShape(
            self.num_layers,
            cfg.decoder.embed_dim,
            cfg.decoder.ffn_embed_dim,
            kv_input_dim=cfg.encoder.embed_dim,
            vocab=len(dictionary),
        )

    def build_decoder_layer(self, cfg, no_encoder_attn=False):
        return HashEEDecoderLayer(cfg, no_encoder_attn)

    def extract_features_scriptable(
        self,
        prev_output_tokens: Tensor,
        encoder_out: Optional[Dict[str, List[Tensor]]],
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
        full_context_alignment: bool = False,
        alignment_layer: Optional[int] = None,
        alignment_heads: Optional[int] = None,
    ):
        enc: Optional[Tensor] = None
        enc_padding_mask: Optional[Tensor] = None
        if encoder_out is not None and len(encoder_out["encoder_out"]) > 0:
            enc = encoder_out["encoder_out"][0]
        if encoder_out is not None and len(encoder_out["encoder_padding_mask"]) > 0:
            enc_padding_mask = encoder_out["encoder_padding_mask"][0]

        x, tokens = self._embed_new_positions(prev_output_tokens, incremental_state)
        past_len = prev_output_tokens.size(1) - tokens.size(1)
        pad = tokens.eq(self.padding_idx)
        self_attn_padding_mask = pad if bool(pad.any()) else None
        exits = self.token_exits(tokens)

        inner_states: List[Optional[Tensor]] = [x]
        future_mask = self.buffered_future_mask(x) if incremental_state is None else None
        # Without early exits (or for the masked reference) every layer is fairseq's own,
        # incremental steps included: nothing is ever deferred.
        stock = self.no_early_exits or self.exit_impl == "masked"
        plan_layer = LayerPlanner(exits)
        for i, layer in enumerate(self.layers, start=1):
            plan = Plan.EVERY if stock else plan_layer(i)
            if incremental_state is not None and not stock:
                x = layer.forward_step(x, plan, enc, enc_padding_mask, incremental_state, self_attn_padding_mask)
            elif plan is Plan.EVERY:
                updated, _, _ = layer(
                    x,
                    enc,
                    enc_padding_mask,
                    incremental_state,
                    self_attn_mask=future_mask,
                    self_attn_padding_mask=self_attn_padding_mask,
                )
                # The masked reference keeps the old state of every exited position.
                x = updated if self.exit_impl == "skip" else torch.where((exits >= i).unsqueeze(-1), updated, x)
            elif plan is not Plan.SKIP:
                x = layer.forward_active(x, plan, enc, enc_padding_mask, self_attn_padding_mask)
            inner_states.append(x)

        if self.layer_norm is not None:
            x = self.layer_norm(x)
        x = x.transpose(0, 1)
        if self.project_out_dim is not None:
            x = self.project_out_dim(x)
        if self.speedup_meter is not None:
            self._measure(exits.t(), past_len, enc, enc_padding_mask, incremental_state)
        return x, {"attn": [None], "inner_states": inner_states}

    def _embed_new_positions(self, prev_output_tokens: Tensor, incremental_state):
        """Embeddings (T, B, C) of the positions this call computes, and their tokens.

        Incrementally that is the last position only; its learned position is
        taken from the full prefix, as in fairseq's decoder.
        """
        positions = None
        if self.embed_positions is not None:
            positions = self.embed_positions(prev_output_tokens, incremental_state=incremental_state)
        tokens = prev_output_tokens
        if incremental_state is not None:
            tokens = prev_output_tokens[:, -1:]
            if positions is not None:
                positions = positions[:, -1:]
        tokens = tokens.contiguous()
        x = self.embed_scale * self.embed_tokens(tokens)
        if self.quant_noise is not None:
            x = self.quant_noise(x)
        if self.project_in_dim is not None:
            x = self.project_in_dim(x)
        if positions is not None:
            x = x + positions
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        x = self.dropout_module(x)
        return x.transpose(0, 1), tokens

    def _measure(self, exits: Tensor, past_len: int, enc, enc_padding_mask, incremental_state):
        """Add this call's FLOPs to the meter; exits (B, T) of the new positions."""
        num_rows, new_len = exits.shape
        positions = past_len + torch.arange(new_len, device=exits.device).expand(num_rows, new_len)
        cross_attn = self.layers[0].encoder_attn
        if enc is None or cross_attn is None:
            src_lengths, cross_kv = exits.new_zeros(num_rows), None
        else:
            if incremental_state is not None:
                # The cache, not encoder_out, has the rows of the live hypotheses:
                # with beamable attention encoder_out is never reordered.
                cache = cross_attn._get_input_buffer(incremental_state)
                src_len, enc_rows = cache["prev_key"].size(2), cache["prev_key"].size(0)
                pad = cache.get("prev_key_padding_mask")
            else:
                src_len, enc_rows, pad = enc.size(0), enc.size(1), enc_padding_mask
            lengths = exits.new_full((enc_rows,), src_len) if pad is None else pad.logical_not().sum(dim=1)
            src_lengths = lengths.repeat_interleave(num_rows // enc_rows)
            # Cross-attention keys/values are projected on the first call only.
            cross_kv = lengths if past_len == 0 else None
        self.speedup_meter.add_decoder(self.shape, exits, positions, src_lengths, cross_kv)
