"""Exit rules: which active decoder positions exit, decided at the end of a layer (docs/design.md section 7).

A rule sees, for the N positions a layer just updated, their states after the
layer (``h``, N x C), before it (``h_prev``), their current exit layers and
their ``PositionMemory`` (what the rule wrote for them at the layers below,
in this forward), and returns their new exit layers: the layer itself (exit
here), a later one it already knows (DAT's multinomial), or the current one.
It reads nothing but the position's own states and memory, and a position
is active at every layer below its exit, so a decision is the same whether
the position is computed teacher-forced or as one incremental step, and an
exited position is then a frozen one like any hash-exited position (the
KV-cache invariant holds unchanged). A rule fires only while the model is not
training (multi-exit training runs every layer) and never at the top layer,
where every position exits anyway.

``ConfidenceRule`` is CALM's (Schuster et al. 2022): exit when a confidence
``c_i`` reaches the threshold ``lambda`` (or, with ``--exit-threshold-decay``,
CALM's threshold decaying along the decoding positions):

- ``softmax``: top-1 minus top-2 probability of the layer's next-token
  distribution (CALM's main measure; costs an output projection per position
  and layer it is asked at, and a position that exits outputs the logits it
  was decided with);
- ``saturation``: cosine similarity of the state after and before the layer,
  from layer 2 on: before layer 1 there is only the embedding, and CALM's
  state measure has no confidence at its first exit (t5x
  ``t5x/contrib/calm/models.py``, ``conf_method == 'state'``);
- ``classifier``: the probability, from one ``Linear(d, 2)`` shared by the
  layers, that the layer's top prediction equals the top layer's (trained
  with the backbone frozen, ``--criterion calm_exit_classifier``).

CALM's reference code exits a whole batch together at its least confident
row; this rule decides per position, and the exited rows are really skipped.
DAT's rules are in dat.py, LECO's in leco.py.
"""

import contextlib
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import HashEEError
from ..modules import flops

CONFIDENCE_MEASURES = ("softmax", "saturation", "classifier")


class PositionMemory:
    """Values a rule carries from layer to layer for each position of one stack forward.

    ``run_layers`` creates one per forward (B, T) and points it at the positions
    a layer updated (``at``) before the rule decides; a rule reads what it wrote
    for them at lower layers and writes this layer's. Incrementally a forward is
    one step, so a position's memory holds exactly its own history, as in a
    teacher-forced forward. ``first_position`` is the absolute decoding position
    of the forward's time 0 (incrementally, the step's), for rules that depend
    on the position.

    It also keeps the next-token logits a rule computed to decide (``keep_logits``):
    a position that exits at that layer outputs them (``settle_logits``), so its
    exit layer's head is applied once, as in CALM's code, not once to decide and
    once more for the output. They are written into the forward's output logits
    (B, T, V) as they come, with a mask of the positions they are final for: no
    host read.
    """

    def __init__(self, shape, device, first_position: int = 0):
        self.shape, self.device = tuple(shape), device
        self.first_position = first_position
        self._fields = {}
        self._index = None
        self._logits: Optional[Tensor] = None
        self._output: Optional[Tensor] = None  # (B, T, V) once a rule kept logits
        self._known: Optional[Tensor] = None  # (B, T): where _output holds a position's final logits

    def at(self, rows: Tensor, times: Tensor) -> "PositionMemory":
        self._index = (rows, times)
        self._logits = None
        return self

    def read(self, name: str, fill, dtype=torch.long) -> Tensor:
        """The field ``name`` (N,) at the current positions; ``fill`` where never written."""
        if name not in self._fields:
            self._fields[name] = torch.full(self.shape, fill, dtype=dtype, device=self.device)
        return self._fields[name][self._index]

    def write(self, name: str, values: Tensor) -> None:
        if name not in self._fields:
            self._fields[name] = torch.zeros(self.shape, dtype=values.dtype, device=self.device)
        self._fields[name].index_put_(self._index, values.to(self._fields[name].dtype))

    def positions(self) -> Tensor:
        """The absolute decoding positions (N,) of the current positions."""
        return self._index[1] + self.first_position

    def keep_logits(self, logits: Tensor) -> None:
        """The exit head's logits (N, V) a rule computed at the current positions."""
        self._logits = logits

    def settle_logits(self, exited: Tensor) -> None:
        """Keep the logits the rule computed (if any) as the output of the current positions that
        exit at this layer (``exited``, N); the others' are overwritten later."""
        if self._logits is None:
            return
        if self._output is None:
            self._output = self._logits.new_empty(self.shape + (self._logits.size(-1),))
            self._known = torch.zeros(self.shape, dtype=torch.bool, device=self.device)
        self._output.index_put_(self._index, self._logits)
        self._known.index_put_(self._index, exited)
        self._logits = None

    def exit_logits(self) -> Optional[Tuple[Tensor, Tensor]]:
        """The output logits (B, T, V) a rule's logits were written into and the mask (B, T) of the
        positions whose final logits they hold, or None where the rule kept no logits."""
        return None if self._output is None else (self._output, self._known)


def kept_head_logits(decoder, layer: int, h: Tensor, memory: Optional[PositionMemory]) -> Tensor:
    """Layer ``layer``'s next-token logits (N, V) for states ``h``, kept in ``memory`` (when given)
    for the output of the positions that exit there."""
    logits = decoder.exit_heads.logits(decoder, layer, h)
    if memory is not None:
        memory.keep_logits(logits)
    return logits


def softmax_margin(logits: Tensor) -> Tensor:
    """Top-1 minus top-2 probability (N,) of next-token ``logits`` (N, V): CALM's softmax response."""
    top2 = F.softmax(logits.float(), dim=-1).topk(2, dim=-1).values
    return top2[:, 0] - top2[:, 1]


def exit_here(fires: Tensor, layer: int, current: Tensor) -> Tensor:
    """Exit layers (N,): ``layer`` where ``fires``, else ``current``."""
    return torch.where(fires, torch.full_like(current, layer), current)


class ExitRule(nn.Module):
    """What every rule shares: its threshold, lowest exit layer and the criterion that trains it."""

    name = "rule"
    threshold_range: Optional[Tuple[float, float]] = (0.0, 1.0)  # None: the rule takes no threshold
    default_threshold = 0.9
    trained_by: Optional[str] = None  # the --criterion that trains the rule's own parameters
    # False: an exited position is frozen (section 1). True (FREE's): it is stacked, and its layers above
    # the exit run later, when its hypothesis next goes deep (docs/design.md section 8).
    synchronized = False
    adaptive = False  # a threshold refitted from what decoding shows (FREE's --use-adapt-threshold)

    def __init__(self):
        super().__init__()
        self.min_layer = 1
        self.threshold = self.default_threshold

    def set_threshold(self, threshold: float) -> None:
        if self.threshold_range is None:
            raise HashEEError(f"--exit-threshold: the {self.name} rule takes no threshold")
        low, high = self.threshold_range
        if not low <= threshold <= high:
            raise HashEEError(f"--exit-threshold: {threshold} is outside [{low}, {high}], the range of the {self.name}")
        self.threshold = float(threshold)

    def decides_at(self, layer: int) -> bool:
        """Whether the rule looks at positions after ``layer`` at all (else: no cost, no host read)."""
        return layer >= self.min_layer

    def begin_generation(self) -> None:
        """Called at the first step of each generation; an adaptive threshold refits here."""

    def decide(
        self, decoder, layer: int, h: Tensor, h_prev: Tensor, current: Tensor, memory: Optional[PositionMemory] = None
    ) -> Tensor:
        """New exit layers (N,) of the positions ``layer`` just updated (only asked where it decides);
        ``memory``: the positions' values from the layers below (rules that compare layers)."""
        return exit_here(self.fires(decoder, layer, h, h_prev), layer, current)

    def fires(self, decoder, layer: int, h: Tensor, h_prev: Tensor) -> Tensor:
        return self.score(decoder, layer, h, h_prev) >= self.threshold

    def score(self, decoder, layer: int, h: Tensor, h_prev: Tensor) -> Tensor:
        """What the threshold is compared with (N,), for rules that take one."""
        raise NotImplementedError

    def decision_flops(self, decoder, layer: int) -> float:
        """Matrix-product FLOPs of one position's decision at ``layer`` of ``decoder`` (elementwise
        work is not counted, as elsewhere in the FLOPs model); a rule that applies the decoder's
        exit heads counts what the layer's head costs."""
        raise NotImplementedError


class ConfidenceRule(ExitRule):
    trained_by = "calm_exit_classifier"
    # CALM's decaying threshold: (tau, N) of --exit-threshold-decay, or None for a constant one.
    decay: Optional[Tuple[float, int]] = None

    def __init__(self, measure: str, embed_dim: int):
        super().__init__()
        if measure not in CONFIDENCE_MEASURES:
            raise HashEEError(f"--exit-confidence: expected one of {', '.join(CONFIDENCE_MEASURES)}, got {measure!r}")
        self.measure = measure
        self.name = f"{measure} confidence"
        if measure == "saturation":
            self.threshold_range = (-1.0, 1.0)
        self.meta_classifier = nn.Linear(embed_dim, 2) if measure == "classifier" else None

    def decides_at(self, layer: int) -> bool:
        # Saturation compares a layer's output with its input: at layer 1 that is the embedding.
        return super().decides_at(layer) and (layer >= 2 or self.measure != "saturation")

    def set_threshold_decay(self, tau: float, length: int) -> None:
        """Decay the threshold along the decoding positions (CALM, Schuster et al. 2022):
        ``tau`` its temperature, ``length`` the maximum target length N."""
        if not tau > 0:
            raise HashEEError(f"--exit-threshold-decay: expected a temperature > 0, got {tau}")
        if not length >= 1:
            raise HashEEError(f"--exit-threshold-decay-length: expected a positive number of positions, got {length}")
        self.decay = (float(tau), int(length))

    def thresholds(self, positions: Tensor) -> Tensor:
        """The decayed threshold at absolute decoding positions ``t`` (N,): ``clip(0.9 lambda +
        0.1 exp(-tau t / N))`` to the measure's range. It reads the absolute position only, so a
        teacher-forced forward and an incremental step decide alike."""
        tau, length = self.decay
        decayed = 0.9 * self.threshold + 0.1 * torch.exp(-tau * positions.float() / length)
        return decayed.clamp(*self.threshold_range)

    def decide(
        self, decoder, layer: int, h: Tensor, h_prev: Tensor, current: Tensor, memory: Optional[PositionMemory] = None
    ) -> Tensor:
        """Exit where ``c_layer`` reaches the threshold; the softmax measure keeps the logits it
        decided with in ``memory`` (the output of the positions that exit here)."""
        if self.measure == "softmax":
            confidence = softmax_margin(kept_head_logits(decoder, layer, h, memory))
        else:
            confidence = self.score(decoder, layer, h, h_prev)
        threshold = self.threshold
        if self.decay is not None:
            if memory is None:
                raise HashEEError("--exit-threshold-decay: the decaying threshold needs the forward's PositionMemory")
            threshold = self.thresholds(memory.positions())
        return exit_here(confidence >= threshold, layer, current)

    def score(self, decoder, layer: int, h: Tensor, h_prev: Tensor) -> Tensor:
        """``c_layer`` (N,) of the positions whose states after/before the layer are ``h``/``h_prev``."""
        if self.measure == "softmax":
            return softmax_margin(decoder.exit_heads.logits(decoder, layer, h))
        if self.measure == "saturation":
            return F.cosine_similarity(h.float(), h_prev.float(), dim=-1)
        return F.softmax(self.meta_classifier(h).float(), dim=-1)[:, 1]

    def decision_flops(self, decoder, layer: int) -> float:
        if self.measure == "softmax":  # the layer's head, whatever its architecture
            return decoder.exit_heads.flops_per_position(layer, decoder.shape.vocab)
        if self.measure == "classifier":
            return flops.linear(decoder.shape.embed_dim, 2)
        return 0.0


@contextlib.contextmanager
def every_layer_in_eval(model):
    """The model as it computes at inference, but with every layer run for every
    position (no rule fires): the states a rule or its classifier learns from."""
    decoder, training = model.decoder, model.training
    rule, decoder.exit_rule = decoder.exit_rule, None
    model.eval()
    try:
        yield
    finally:
        decoder.exit_rule = rule
        model.train(training)


def scored_layers(rule: ExitRule, num_layers: int) -> List[int]:
    """The layers below the top of a ``num_layers``-layer decoder where ``rule`` decides: where
    its scores come from. Empty when the decoder is too shallow for the rule (saturation decides
    from layer 2, so not in a 2-layer decoder) or ``--exit-min-layer`` is the top layer."""
    return [i for i in range(1, num_layers) if rule.decides_at(i)]


def rule_scores(model, src_tokens: Tensor, src_lengths: Tensor, prev_output_tokens: Tensor) -> Tensor:
    """The decoder rule's score of every live position at every layer below the top where it
    decides, from a forward that runs every layer: what a threshold is calibrated on (its
    median exits about half the position-layer pairs)."""
    decoder, rule = model.decoder, model.decoder.exit_rule
    layers = scored_layers(rule, decoder.num_layers)
    if not layers:
        if rule.min_layer > 1:
            option = f"--exit-min-layer {rule.min_layer}"
        elif isinstance(rule, ConfidenceRule) and rule.measure == "saturation":
            option = "--exit-confidence saturation (it decides from layer 2)"
        else:
            option = f"--decoder-layers {decoder.num_layers}"
        raise HashEEError(
            f"{option}: the {rule.name} rule decides at no layer below the top of this "
            f"{decoder.num_layers}-layer decoder, so it has no scores to set a threshold from"
        )
    cross_attention = decoder.layers[0].encoder_attn
    beam = cross_attention.beam_size if cross_attention is not None else 1
    model.set_beam_size(1)  # a teacher-forced pass has one encoder row per decoder row
    try:
        with torch.no_grad(), every_layer_in_eval(model):
            _, extra = model(src_tokens, src_lengths, prev_output_tokens)
            live = prev_output_tokens.ne(decoder.padding_idx).t()  # (T, B), as the states
            states = [state[live] for state in extra["inner_states"]]
            return torch.cat([rule.score(decoder, i, states[i], states[i - 1]) for i in layers])
    finally:
        model.set_beam_size(beam)
