"""HashEE encoder and decoder: fairseq's Transformer stacks with per-token exits.

Each stack keeps fairseq's embeddings, layers and output layer and replaces
only the loop over layers (``PlannedStackMixin.run_layers``): layer ``i``
updates the positions whose exit layer is at least ``i`` (docs/design.md
sections 1 and 3). ``exit_impl``, chosen when the model is built, sets the
one flag ``skips`` that says how:

- ``skip`` runs each layer's plan: no work where no position is active,
  fairseq's stock layer where no position has exited yet (teacher-forced and
  encoder), and otherwise the active positions only; an incremental decoder
  step always runs its rows through the plugin's own cache
  (modules/hashee_layers.py, modules/kv_cache.py);
- ``masked`` runs fairseq's stock layer on every position and keeps the old
  state where a position has exited: the slow reference definition.
"""

import dataclasses
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from fairseq.models.transformer import TransformerDecoderBase, TransformerEncoderBase
from torch import Tensor, nn

from ..errors import HashEEError
from ..exits.heads import ExitHeads
from ..exits.rules import PositionMemory
from ..modules import flops, kv_cache
from ..modules.exit_table import ExitTableMixin
from ..modules.flops import StackShape
from ..modules.hashee_layers import HashEEDecoderLayer, HashEEEncoderLayer, LayerInputs
from ..modules.layer_plan import StackPlanner

EXIT_IMPLS = ("skip", "masked")


class StackRun(NamedTuple):
    """What a stack's loop over its layers gives back."""

    x: Tensor  # (T, B, C) states after the last layer
    exits: Tensor  # (B, T) exit layers the positions ran to (a rule's decisions included)
    decision_flops: float  # FLOPs an exit rule spent deciding
    # Output logits (B, T, V) holding those a rule decided with, and the mask (B, T) of the positions
    # whose final logits they are (PositionMemory.exit_logits).
    exit_logits: Optional[Tuple[Tensor, Tensor]] = None


class DecoderCall(NamedTuple):
    """One decoder call prepared to run: teacher-forced over every position, or one step."""

    x: Tensor  # (T, B, C) embeddings of the positions this call computes
    planner: StackPlanner  # their plans, read
    inputs: LayerInputs  # what every layer reads besides the states
    first_position: int  # the absolute position of x's time 0 (incrementally, the step's)


class PlannedStackMixin:
    """The loop over a stack's layers, shared by the encoder and the decoder."""

    def _init_planned_stack(self, exit_impl: str, exit_rule: Optional[nn.Module] = None) -> None:
        # The depth of the model this stack was cut from (models/truncation.py):
        # what the speed-up report counts as the full model.
        self.register_buffer("full_depth", torch.tensor(self.num_layers))
        self.exit_impl = exit_impl  # sets ``skips``
        # A dynamic exit rule (exits/rules.py): the decoder's, when the model has one.
        self.exit_rule = exit_rule
        # Set by flops.measuring() while FLOPs are being counted.
        self.speedup_meter = None
        # Set while ConsistentEE's criterions decode with exits in train mode (exits/consistentee.py: exploring).
        self.rule_while_training = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.shape = dataclasses.replace(self.shape, full_layers=int(self.full_depth))

    @property
    def exit_impl(self) -> str:
        return "skip" if self.skips else "masked"

    @exit_impl.setter
    def exit_impl(self, value: str) -> None:
        if value not in EXIT_IMPLS:
            raise HashEEError(f"--exit-impl: expected one of {', '.join(EXIT_IMPLS)}, got {value!r}")
        # The one flag every part of a forward reads: the layers run their plans (skip), or
        # fairseq's stock layers run on every position and exited ones are put back (masked).
        self.skips = value == "skip"
        self._run_layer = self._run_skip if self.skips else self._run_masked

    def _active_rule(self):
        """The exit rule, unless training (multi-exit training runs every layer) without
        ``rule_while_training``, which ConsistentEE's criterions set to decode with exits."""
        return self.exit_rule if self.rule_while_training or not self.training else None

    def planner(self, exits: Tensor, step: bool = False, causal: bool = False) -> StackPlanner:
        """The planner of one forward over positions that exit at ``exits`` (B, T): an
        incremental decoder ``step``, or a teacher-forced forward (``causal`` in a decoder).
        Nothing is read from the device until the forward calls its ``read``."""
        rule = self._active_rule()
        return StackPlanner(
            exits,
            self.num_layers,
            every_layer_full=self.no_early_exits and rule is None,
            step=step,
            causal=causal,
            skips=self.skips,
            synchronized_from=rule.shallow_layer + 1 if _stacks(rule, step, self.skips) else None,
        )

    def run_layers(
        self,
        states: List[Tensor],
        planner: StackPlanner,
        inputs: LayerInputs,
        keep_states: bool,
        first_position: int = 0,
    ) -> StackRun:
        """Run every layer, as ``planner`` (already read) plans them, on ``states[-1]`` (T, B, C).

        The skip path works on the states in the planner's order (each row's
        positions deepest exit first, so that every layer's are a prefix) and
        puts them back once at the end. With ``keep_states`` each layer's output
        is appended to ``states``; without, the list is emptied, so that (the
        caller holding no other reference) no state outlives the layer that reads
        it: one state less at the memory peak. A rule decides after each layer
        below the top which of its active positions exit there;
        ``first_position`` is the absolute position of time 0 (the rule's memory
        gives it to rules that depend on it).
        """
        x = states[-1]
        if not keep_states:
            states.clear()
        rule = self._active_rule()
        # What the rule carries for each position from one layer to the next, in this forward only.
        memory = PositionMemory(planner.exits.shape, x.device, first_position) if rule is not None else None
        x = planner.sort(x)
        exits, decision_flops = planner.exits, 0.0
        for i, layer in enumerate(self.layers, start=1):
            # The input stays referenced only while a rule may read it (the state before the layer).
            before = x if rule is not None else None
            x = self._run_layer(layer, x, i, planner, inputs)
            if rule is not None and i < self.num_layers and rule.decides_at(i):
                x, exits, spent = self._decide_exits(rule, i, x, before, planner, memory, exits)
                decision_flops += spent
            if keep_states:
                states.append(planner.unsort(x))
        return StackRun(planner.unsort(x), exits, decision_flops, memory.exit_logits() if memory else None)

    def _decide_exits(
        self,
        rule,
        layer: int,
        after: Tensor,
        before: Tensor,
        planner: StackPlanner,
        memory: PositionMemory,
        exits: Tensor,
    ) -> Tuple[Tensor, Tensor, float]:
        """Let ``rule`` exit some of ``layer``'s active positions: the states ``after`` the layer in
        the planner's new order, the new ``exits`` and what deciding cost. A position that exits
        here outputs the logits the rule decided with (if it computed any). A synchronized rule's
        positions are frozen nowhere: teacher-forced (and in the masked reference) every position
        goes on through every layer, and only an incremental step on the skip path leaves them
        for later (section 8)."""
        where = planner.active_positions(layer)
        if where.row.numel() == 0:
            return after, exits, 0.0
        at_states = (where.state_time, where.state_row)
        decided = rule.decide(
            self,
            layer,
            after[at_states],
            before[at_states],
            exits[where.row, where.time],
            memory=memory.at(where.row, where.time),
        )
        memory.settle_logits(decided == layer)
        exits = exits.index_put((where.row, where.time), decided)
        if not rule.synchronized or _stacks(rule, planner.step, planner.skips):
            after = planner.replan(exits, after)
        return after, exits, where.row.numel() * rule.decision_flops(self, layer)

    @staticmethod
    def _run_skip(layer, x: Tensor, i: int, planner: StackPlanner, inputs: LayerInputs) -> Tensor:
        return layer.forward_plan(x, planner.layer_plan(i), inputs)

    @staticmethod
    def _run_masked(layer, x: Tensor, i: int, planner: StackPlanner, inputs: LayerInputs) -> Tensor:
        # Every position computed, exited ones discarded: nothing is deferred either.
        return torch.where(planner.active_mask(i), layer.forward_stock(x, inputs), x)


class HashEEEncoder(ExitTableMixin, PlannedStackMixin, TransformerEncoderBase):
    stack_name = "encoder"

    def __init__(self, cfg, dictionary, embed_tokens, exit_impl: str = "skip"):
        super().__init__(cfg, dictionary, embed_tokens)
        self._init_exit_table(dictionary)
        self._init_planned_stack(exit_impl)
        self.shape = StackShape(self.num_layers, cfg.encoder.embed_dim, cfg.encoder.ffn_embed_dim, self.num_layers)

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
        exits = self.token_exits(src_tokens)
        planner = self.planner(exits)
        counts = planner.read()  # the forward's one host read, which also says whether any row is padded
        has_pads = counts.padded if counts is not None else bool(padding_mask.any())
        x, encoder_embedding = self.forward_embedding(src_tokens, token_embeddings)
        if has_pads:
            x = x * (1 - padding_mask.unsqueeze(-1).type_as(x))
        encoder_states: List[Tensor] = [x.transpose(0, 1)]
        del x  # the loop's states alone hold the layers' input
        inputs = LayerInputs(
            padding_mask=padding_mask if has_pads else None,
            # Nothing but the loop holds on to x unless hidden states are returned or autograd needs it.
            in_place=not return_all_hiddens and not torch.is_grad_enabled(),
        )
        x = self.run_layers(encoder_states, planner, inputs, keep_states=return_all_hiddens).x

        if self.layer_norm is not None:
            x = self.layer_norm(x)
        if self.speedup_meter is not None:
            self.speedup_meter.add_encoder(self.shape, exits)

        return {
            "encoder_out": [x],  # T x B x C
            "encoder_padding_mask": [padding_mask],  # B x T
            "encoder_embedding": [encoder_embedding],  # B x T x C
            "encoder_states": encoder_states,  # List[T x B x C]
            "fc_results": [],
            "src_tokens": [],
            "src_lengths": [(~padding_mask).sum(dim=1, dtype=torch.int32).reshape(-1, 1)],
        }


class HashEEDecoder(ExitTableMixin, PlannedStackMixin, TransformerDecoderBase):
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
        exit_rule: Optional[nn.Module] = None,
        exit_heads: str = "shared",
    ):
        super().__init__(cfg, dictionary, embed_tokens, no_encoder_attn, output_projection)
        self._init_exit_table(dictionary)
        self._init_planned_stack(exit_impl, exit_rule)
        self.exit_heads = ExitHeads(self.num_layers, self.output_embed_dim, self.output_projection, exit_heads)
        self.shape = StackShape(
            self.num_layers,
            cfg.decoder.embed_dim,
            cfg.decoder.ffn_embed_dim,
            self.num_layers,
            kv_input_dim=cfg.encoder.embed_dim,
            vocab=len(dictionary),
        )

    def forward(
        self,
        prev_output_tokens,
        encoder_out=None,
        incremental_state=None,
        features_only: bool = False,
        full_context_alignment: bool = False,
        alignment_layer: Optional[int] = None,
        alignment_heads: Optional[int] = None,
        src_lengths=None,
        return_all_hiddens: bool = False,
    ):
        """fairseq's decoder forward, with each position's logits from the head of its exit layer."""
        x, extra = self.extract_features(
            prev_output_tokens,
            encoder_out=encoder_out,
            incremental_state=incremental_state,
            full_context_alignment=full_context_alignment,
            alignment_layer=alignment_layer,
            alignment_heads=alignment_heads,
        )
        if not features_only:
            x = self.exit_heads.output(self, x, extra["exits"], extra["exit_logits"])
        return x, extra

    def build_decoder_layer(self, cfg, no_encoder_attn=False):
        return HashEEDecoderLayer(cfg, no_encoder_attn)

    def reorder_incremental_state(self, incremental_state, new_order: Tensor) -> None:
        """Beam search's reorder of the self-attention cache: its ancestry map, no keys
        (fairseq reorders the cross-attention buffers through their own modules)."""
        cache = kv_cache.SelfAttentionCache.of(self, incremental_state)
        if cache is not None:
            cache.reorder(new_order)

    def extract_features_scriptable(
        self,
        prev_output_tokens: Tensor,
        encoder_out: Optional[Dict[str, List[Tensor]]],
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
        full_context_alignment: bool = False,
        alignment_layer: Optional[int] = None,
        alignment_heads: Optional[int] = None,
    ):
        if full_context_alignment or alignment_layer is not None or alignment_heads is not None:
            raise HashEEError(
                "attention alignments (--print-alignment, alignment layers/heads) are not supported by HashEE decoders"
            )
        return self._run_call(self._prepare_call(prev_output_tokens, encoder_out, incremental_state))

    def _prepare_call(self, prev_output_tokens: Tensor, encoder_out, incremental_state) -> DecoderCall:
        """Embed the positions this call computes, read their plans (the call's one host read) and
        gather what every layer reads; incrementally, advance the caches to the new position."""
        enc = _first(encoder_out, "encoder_out")
        enc_padding_mask = _first(encoder_out, "encoder_padding_mask")
        step = incremental_state is not None
        x, tokens = self._embed_new_positions(prev_output_tokens, incremental_state)
        first_position = prev_output_tokens.size(1) - tokens.size(1)
        if step and enc is not None and first_position == 0:
            kv_cache.project_sources(self.layers, enc, enc_padding_mask, incremental_state, x.size(1))
        pad = tokens.eq(self.padding_idx)
        rule = self._active_rule()
        if step and first_position == 0 and rule is not None:
            rule.begin_generation()
        planner = self.planner(self.token_exits(tokens), step=step, causal=not step)
        counts = planner.read()
        padding_mask = pad if (counts.padded if counts is not None else bool(pad.any())) else None
        self_cache = sources = None
        if step and self.skips:
            self_cache = kv_cache.SelfAttentionCache.for_step(self, incremental_state, planner, padding_mask)
        cross_attn = self.layers[0].encoder_attn
        if self.skips and enc is not None and cross_attn is not None:
            if step:
                sources = kv_cache.SourceRows.of_step(cross_attn, incremental_state, planner)
            else:
                sources = kv_cache.SourceRows(x.size(1), enc.size(1), enc_padding_mask)
        inputs = LayerInputs(
            padding_mask=padding_mask,
            encoder_out=enc,
            encoder_padding_mask=enc_padding_mask,
            sources=sources,
            incremental_state=incremental_state,
            self_cache=self_cache,
            self_attn_mask=None if step else self.buffered_future_mask(x),
        )
        return DecoderCall(x, planner, inputs, first_position)

    def _run_call(self, call: DecoderCall):
        """The layers, the final norm and projection of a prepared call: features (B, T, C) and
        fairseq's ``extra`` with each position's exit layer."""
        step = call.inputs.incremental_state is not None
        # Teacher-forced, each layer's output is returned (multi-exit criteria read them);
        # a generation step needs none of them.
        inner_states: List[Optional[Tensor]] = [call.x]
        run = self.run_layers(
            inner_states, call.planner, call.inputs, keep_states=not step, first_position=call.first_position
        )
        x = run.x
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        x = x.transpose(0, 1)
        if self.project_out_dim is not None:
            x = self.project_out_dim(x)
        cache = call.inputs.self_cache
        block = cache.block if cache is not None else None
        rule = self._active_rule()
        if block is not None and rule.adaptive:
            rule.observe(self, block.entry, block.states, block.computed)
        if self.speedup_meter is not None:
            self._measure(run, call, block)
        extra = {"attn": [None], "inner_states": inner_states, "exits": run.exits, "exit_logits": run.exit_logits}
        return x, extra

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

    def _measure(self, run: StackRun, call: DecoderCall, block) -> None:
        """Add this call's FLOPs to the meter: its layers, its exit heads beyond the output
        projection (none where a rule's logits are the output: counted as its decision), the
        rule's decisions, and a synchronized rule's deep layers where they run (section 8)."""
        known = run.exit_logits[1] if run.exit_logits is not None else None
        extra = run.decision_flops + self.exit_heads.output_extra_flops(run.exits, self.shape.vocab, known)
        source_lengths = self._source_lengths(call.inputs)
        layers_run = None
        rule = self._active_rule()
        if rule is not None and rule.synchronized and call.inputs.incremental_state is None:
            layers_run = flops.synchronized_layers(run.exits, self.num_layers)
        if block is not None:
            extra += flops.flushed(self.shape, rule.shallow_layer, block, source_lengths, run.exits.size(0))
        self.speedup_meter.add_decoder(
            self.shape, run.exits, call.first_position, source_lengths, extra_flops=extra, layers_run=layers_run
        )

    def _source_lengths(self, inputs: LayerInputs) -> Optional[Tensor]:
        """The source length of each row of the cross-attention keys; None without them."""
        cross_attn = self.layers[0].encoder_attn
        enc, state = inputs.encoder_out, inputs.incremental_state
        if enc is None or cross_attn is None:
            return None
        if state is not None:
            return kv_cache.cached_source_lengths(cross_attn, state)
        if inputs.encoder_padding_mask is not None:
            return inputs.encoder_padding_mask.logical_not().sum(dim=1)
        return torch.full((enc.size(1),), enc.size(0), dtype=torch.long, device=enc.device)


def _stacks(rule, step: bool, skips: bool) -> bool:
    """Whether a forward leaves a synchronized rule's exited positions pending (FREE's stacking):
    an incremental step on the skip path. Elsewhere they run every layer."""
    return rule is not None and rule.synchronized and step and skips


def _first(encoder_out: Optional[Dict[str, List[Tensor]]], key: str) -> Optional[Tensor]:
    """fairseq's encoder output entry ``key`` (a list holding one tensor, or none)."""
    if encoder_out is None or len(encoder_out[key]) == 0:
        return None
    return encoder_out[key][0]
