"""DAT (Elbayad et al., "Depth-Adaptive Transformer", ICLR 2020): token-level halting from oracle exits.

A multi-exit model (criterions/multi_exit.py) says, for every target position,
how well each layer's head scores the reference token; the *oracle* exit is
the layer that scores it best, penalised toward shallow layers:

    e*(t) = argmax_i  log p_i(y_t) - penalty * i

or, smoothed along the target positions of the sentence
(``--dat-oracle-smoothing sigma``, the paper's smoothed likelihood oracle),

    e*(t) = argmax_i  sum_t' exp(-|t - t'| / sigma) log p_i(y_t') - penalty * i

so that a token's exit also reflects how its neighbours fare at each layer.

Two halting mechanisms learn to predict it from the states the decoder
computes (``--criterion dat_exit_classifier``):

- ``dat-halting`` (geometric-like): a binary halting classifier at every
  layer below the top; a position exits at the first layer whose halting
  probability reaches ``--exit-threshold`` (default 0.5). Trained as the
  hazard of the oracle: at layers ``i <= e*``, halt at ``i = e*``, continue
  below.
- ``dat-multinomial``: one classifier reads the state after layer 1 and picks
  the exit layer in 1..L, so the exit is known before layers 2..L run, as a
  hash's is; no threshold.

Deviations from the paper: the classifiers are trained in a second stage with
the backbone frozen (the paper also trains them jointly), and only the
likelihood-based oracle is offered (not the correctness-based one).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modules import flops
from .rules import ExitRule

DAT_RULES = ("dat-halting", "dat-multinomial")


def smooth_along_positions(target_logprobs: Tensor, live: Tensor, sigma: float) -> Tensor:
    """Each layer's log-probability of the reference (L, B, T) summed over the live positions
    ``t'`` of the same sentence (``live``, B x T) with weights ``exp(-|t - t'| / sigma)``;
    unchanged for ``sigma`` 0 (no smoothing)."""
    if sigma == 0:
        return target_logprobs
    times = torch.arange(target_logprobs.size(-1), device=target_logprobs.device, dtype=target_logprobs.dtype)
    kernel = torch.exp(-(times[:, None] - times[None, :]).abs() / sigma)  # (t, t')
    return torch.einsum("lbs,ts->lbt", target_logprobs.masked_fill(~live, 0.0), kernel)


def oracle_exits(target_logprobs: Tensor, penalty: float) -> Tensor:
    """Oracle exit layers (N,) in 1..L from each layer's log-probability of the reference token (L, N)."""
    layers = torch.arange(1, target_logprobs.size(0) + 1, device=target_logprobs.device, dtype=target_logprobs.dtype)
    return (target_logprobs - penalty * layers[:, None]).argmax(dim=0) + 1


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
