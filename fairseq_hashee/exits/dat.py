"""DAT (Elbayad et al., "Depth-Adaptive Transformer", ICLR 2020): token-level halting from oracle exits.

A multi-exit model (criterions/multi_exit.py) says, for every target position,
what each layer's head makes of the reference token; the *oracle* exit is the
layer that does best, penalised toward shallow layers (the paper's section 3.2):

- likelihood-based (eq. 14): ``e*(t) = argmax_i log p_i(y_t) - penalty * i``;
- correctness-based (eq. 16-17): ``e*(t) = argmax_i C_i(t) - penalty * i`` with
  ``C_i(t) = 1`` where layer ``i``'s top prediction is ``y_t``, else 0: with a
  penalty below 1, the lowest layer that predicts the token, and layer 1 where
  no layer does (the argmax of ``-penalty * i``).

Either score can be smoothed along the target positions of the sentence
(``--dat-oracle-smoothing sigma``) with the paper's RBF kernel (eq. 15),

    score_i(t) = sum_t' exp(-|t - t'|^2 / sigma) score_i(t')

so that a token's exit also reflects how its neighbours fare at each layer.

Two halting mechanisms learn to predict it from the states the decoder
computes (``--criterion dat_exit_classifier`` on a frozen backbone, or
``dat_joint`` with the decoder, the paper's training):

- ``dat-halting`` (geometric-like): a binary halting classifier at every
  layer below the top; a position exits at the first layer whose halting
  probability reaches ``--exit-threshold`` (default 0.5). Trained as the
  hazard of the oracle: at layers ``i <= e*``, halt at ``i = e*``, continue
  below.
- ``dat-multinomial``: one classifier reads the state after layer 1 (the
  paper's ``h_t^1``, eq. 11) and picks the exit layer in 1..L, so the exit is
  known before layers 2..L run, as a hash's is; no threshold.
"""

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import HashEEError
from ..modules import flops
from .rules import ExitRule

DAT_RULES = ("dat-halting", "dat-multinomial")
ORACLES = ("likelihood", "correctness")


def smooth_along_positions(scores: Tensor, live: Tensor, sigma: float) -> Tensor:
    """Each layer's score of the reference (L, B, T) summed over the live positions ``t'`` of the
    same sentence (``live``, B x T) with the paper's RBF weights ``exp(-|t - t'|^2 / sigma)`` (its
    eq. 15); unchanged for ``sigma`` 0 (no smoothing)."""
    if sigma == 0:
        return scores
    times = torch.arange(scores.size(-1), device=scores.device, dtype=scores.dtype)
    kernel = torch.exp(-((times[:, None] - times[None, :]) ** 2) / sigma)  # (t, t')
    return torch.einsum("lbs,ts->lbt", scores.masked_fill(~live, 0.0), kernel)


def oracle_exits(scores: Tensor, penalty: float) -> Tensor:
    """Oracle exit layers (N,) in 1..L from each layer's score of the reference token (L, N); of equal
    scores, the lowest layer."""
    layers = torch.arange(1, scores.size(0) + 1, device=scores.device, dtype=scores.dtype)
    return (scores - penalty * layers[:, None]).argmax(dim=0) + 1


def reference_scores(logits: Tensor, target: Tensor, oracle: str) -> Tensor:
    """What ``oracle`` (ORACLES) scores at each target position (shape of ``target``) from one layer's
    next-token ``logits`` (target's shape x V): ``log p(y_t)`` or ``1[argmax p = y_t]``."""
    if oracle == "correctness":
        return (logits.argmax(dim=-1) == target).float()
    return F.log_softmax(logits.float(), dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)


@dataclass(frozen=True)
class Oracle:
    """The oracle the halting classifiers learn (``--dat-oracle``, ``--dat-oracle-penalty``,
    ``--dat-oracle-smoothing``)."""

    kind: str = "likelihood"
    penalty: float = 0.1
    smoothing: float = 0.0

    def __post_init__(self):
        if self.kind not in ORACLES:
            raise HashEEError(f"--dat-oracle: expected one of {', '.join(ORACLES)}, got {self.kind!r}")
        if self.penalty < 0:
            raise HashEEError(f"--dat-oracle-penalty: must be >= 0, got {self.penalty}")
        if self.smoothing < 0:
            raise HashEEError(f"--dat-oracle-smoothing: must be >= 0, got {self.smoothing}")

    @torch.no_grad()
    def exits(self, logits_by_layer: Iterable[Tensor], target: Tensor, live: Tensor) -> Tensor:
        """The oracle exit layers (N,) of the live target positions (``live``, B x T) from every
        layer's next-token logits (B x T x V each, layers 1..L in order); a constant (no gradient)."""
        scores = torch.stack([reference_scores(logits, target, self.kind) for logits in logits_by_layer])
        return oracle_exits(smooth_along_positions(scores, live, self.smoothing)[:, live], self.penalty)


class HaltingRule(ExitRule):
    name = "dat-halting"
    default_threshold = 0.5
    trained_by = "dat_exit_classifier"

    def __init__(self, embed_dim: int, num_layers: int):
        super().__init__()
        # Row i - 1 is layer i's halting classifier (layers 1..L-1).
        self.halting = nn.Linear(embed_dim, num_layers - 1)

    def halting_logits(self, layer: int, h: Tensor) -> Tensor:
        weight, bias = self.halting.weight[layer - 1 : layer], self.halting.bias[layer - 1 : layer]
        return F.linear(h, weight, bias).squeeze(-1)

    def score(self, decoder, layer: int, h: Tensor, h_prev: Tensor) -> Tensor:
        return torch.sigmoid(self.halting_logits(layer, h).float())

    def decision_flops(self, decoder, layer: int) -> float:
        return flops.linear(decoder.shape.embed_dim, 1)


class MultinomialRule(ExitRule):
    name = "dat-multinomial"
    threshold_range = None
    trained_by = "dat_exit_classifier"

    def __init__(self, embed_dim: int, num_layers: int):
        super().__init__()
        self.exit_layer_classifier = nn.Linear(embed_dim, num_layers)

    def decides_at(self, layer: int) -> bool:
        return layer == 1

    def decide(self, decoder, layer: int, h: Tensor, h_prev: Tensor, current: Tensor, memory=None) -> Tensor:
        predicted = (self.exit_layer_classifier(h).argmax(dim=-1) + 1).clamp(min=self.min_layer)
        return torch.minimum(predicted, current)  # never later than the table's exit

    def decision_flops(self, decoder, layer: int) -> float:
        return flops.linear(decoder.shape.embed_dim, self.exit_layer_classifier.out_features)
