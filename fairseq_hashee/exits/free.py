"""FREE (Bae, Ko, Song and Yun, EMNLP 2023): a shallow-deep decoder with synchronized parallel decoding.

The decoder has two exits, a shallow one after layer ``S`` (``--shallow-exit-layer``)
and the top. At each position the shallow exit's softmax margin (top-1 minus
top-2 probability, ``util/skip_conf.py``) decides: above the threshold
(``--exit-threshold``, FREE's 0.9; strictly above, as the released
``conf <= threshold`` keeps going) the position emits the shallow exit's token
and is *stacked*; otherwise it goes deep. Unlike every other rule here, a
stacked position is not frozen: the next position of its hypothesis that goes
deep runs the deep layers ``S+1..L`` for itself and for every position stacked
since, in one call (synchronized parallel decoding), so each deep layer's keys
and values are computed from that position's own states, never copied from
its shallow state (FREE's ``copy_skipped_hidden_states`` False, causal mask on:
the released defaults). Every position's states are therefore those of the
full model; a decision only picks the exit a position's token comes from, and
when its deep layers run. The teacher-forced forward with the same decisions
is the full forward with each position's logits from its exit
(docs/design.md section 8), which the incremental decoder equals.

The threshold may adapt (``--use-adapt-threshold``, beta_mixture.py): every
position a synchronized call computes deeply gives the estimator its shallow
confidence and whether the shallow and deep predictions agreed; the threshold
is refitted at the start of each generation.

Training is FREE's ``shallowdeep_kd_dyna`` loss (criterions/free_shallow_deep.py).
"""

from typing import List, Tuple

import numpy as np
import torch
from torch import Tensor

from ..errors import HashEEError
from .beta_mixture import MAX_FITS, BetaMixture
from .rules import ExitRule, PositionMemory, exit_here, kept_head_logits, softmax_margin


def default_shallow_layer(num_layers: int) -> int:
    """FREE's ratio (layer 6 of T5-large's 24): a quarter of the decoder, at least 1."""
    return max(1, round(num_layers / 4))


class ShallowDeepRule(ExitRule):
    name = "free"
    trained_by = "free_shallow_deep"
    # Exited positions are stacked, not frozen: their deep layers run later (see the module's docstring).
    synchronized = True

    def __init__(self, num_layers: int, shallow_layer: int):
        super().__init__()
        if not 1 <= shallow_layer < num_layers:
            raise HashEEError(
                f"--shallow-exit-layer: expected a layer in 1..{num_layers - 1} (below the top of a "
                f"{num_layers}-layer decoder), got {shallow_layer}"
            )
        self.num_layers = num_layers
        self.shallow_layer = shallow_layer
        self.adaptive = False
        self.estimator = BetaMixture()
        self.adapted_threshold = None  # the estimator's, once it has been fitted
        self._confidences: List[np.ndarray] = []
        self._agreements: List[np.ndarray] = []

    def decides_at(self, layer: int) -> bool:
        return layer == self.shallow_layer

    def current_threshold(self) -> float:
        return self.threshold if self.adapted_threshold is None else self.adapted_threshold

    def score(self, decoder, layer: int, h: Tensor, h_prev: Tensor) -> Tensor:
        return softmax_margin(decoder.exit_heads.logits(decoder, layer, h))

    def decide(self, decoder, layer: int, h: Tensor, h_prev: Tensor, current: Tensor, memory: PositionMemory = None):
        confidence = softmax_margin(kept_head_logits(decoder, layer, h, memory))
        return exit_here(confidence > self.current_threshold(), layer, current)

    def decision_flops(self, decoder, layer: int) -> float:
        return decoder.exit_heads.flops_per_position(layer, decoder.shape.vocab)

    # --- the adaptive threshold -------------------------------------------------------------

    def use_adaptive_threshold(self, adaptive: bool) -> None:
        self.adaptive = adaptive
        self.adapted_threshold = None

    def observe(self, decoder, shallow_states: Tensor, deep_states: Tensor, computed: Tensor) -> None:
        """Calibration data from one synchronized call: the states (W, n, C) of its positions after
        the shallow layer and after the top, and which of them it computed (W, n)."""
        with torch.no_grad():
            shallow = decoder.exit_heads.logits(decoder, self.shallow_layer, shallow_states[computed])
            deep = decoder.exit_heads.logits(decoder, self.num_layers, deep_states[computed])
            confidence = softmax_margin(shallow)
            agree = shallow.argmax(-1) == deep.argmax(-1)
        self._confidences.append(confidence.float().cpu().numpy())
        self._agreements.append(agree.cpu().numpy())

    def begin_generation(self) -> None:
        """Refit the threshold on everything seen so far (FREE refits before each generation)."""
        if not self.adaptive or not self._confidences or self.estimator.fits >= MAX_FITS:
            return
        self.estimator.fit(np.concatenate(self._confidences), np.concatenate(self._agreements))
        self.adapted_threshold = self.estimator.threshold()

    def calibration_data(self) -> Tuple[np.ndarray, np.ndarray]:
        if not self._confidences:
            return np.zeros(0), np.zeros(0, dtype=bool)
        return np.concatenate(self._confidences), np.concatenate(self._agreements)
