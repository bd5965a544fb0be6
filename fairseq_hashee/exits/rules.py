"""Exit rules: which active decoder positions exit at the end of a layer (docs/design.md section 7).

A rule sees, for the N positions a layer just updated, their states after the
layer (``h``, N x C) and before it (``h_prev``), and returns a bool per
position: exit here. It reads nothing but the position's own states, so the
decision is the same whether the position is computed teacher-forced or as
one incremental step, and an exited position is then a frozen one like any
hash-exited position (the KV-cache invariant holds unchanged). A rule fires
only while the model is not training (multi-exit training runs every layer)
and never at the top layer, where every position exits anyway.

``ConfidenceRule`` is CALM's (Schuster et al. 2022): exit when a confidence
``c_i`` reaches the threshold ``lambda``:

- ``softmax``: top-1 minus top-2 probability of the layer's next-token
  distribution (CALM's main measure; costs an output projection per position
  and layer it is asked at);
- ``saturation``: cosine similarity of the state after and before the layer;
- ``classifier``: the probability, from one ``Linear(d, 2)`` shared by the
  layers, that the layer's top prediction equals the top layer's (trained
  with the backbone frozen, ``--criterion calm_exit_classifier``).

CALM's reference code exits a whole batch together at its least confident
row; this rule decides per position, and the exited rows are really skipped.
"""

import contextlib
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import HashEEError

RULES = ("none", "confidence")
CONFIDENCE_MEASURES = ("softmax", "saturation", "classifier")
# (lowest, highest) value each confidence can take: thresholds outside never mean anything.
THRESHOLD_RANGES: Dict[str, Tuple[float, float]] = {
    "softmax": (0.0, 1.0),
    "saturation": (-1.0, 1.0),
    "classifier": (0.0, 1.0),
}
DEFAULT_THRESHOLD = 0.9


class ConfidenceRule(nn.Module):
    def __init__(self, measure: str, embed_dim: int, threshold: float = DEFAULT_THRESHOLD, min_layer: int = 1):
        super().__init__()
        if measure not in CONFIDENCE_MEASURES:
            raise HashEEError(f"--exit-confidence: expected one of {', '.join(CONFIDENCE_MEASURES)}, got {measure!r}")
        self.measure = measure
        self.classifier = nn.Linear(embed_dim, 2) if measure == "classifier" else None
        self.set_threshold(threshold)
        self.min_layer = min_layer

    def set_threshold(self, threshold: float) -> None:
        low, high = THRESHOLD_RANGES[self.measure]
        if not low <= threshold <= high:
            raise HashEEError(
                f"--exit-threshold: {threshold} is outside [{low}, {high}], the range of the {self.measure} confidence"
            )
        self.threshold = float(threshold)

    def confidence(self, decoder, layer: int, h: Tensor, h_prev: Tensor) -> Tensor:
        """``c_layer`` (N,) of the positions whose states after/before the layer are ``h``/``h_prev``."""
        if self.measure == "softmax":
            probs = F.softmax(decoder.exit_heads.logits(decoder, layer, h).float(), dim=-1)
            top2 = probs.topk(2, dim=-1).values
            return top2[:, 0] - top2[:, 1]
        if self.measure == "saturation":
            return F.cosine_similarity(h.float(), h_prev.float(), dim=-1)
        return F.softmax(self.classifier(h).float(), dim=-1)[:, 1]

    def decide(self, decoder, layer: int, h: Tensor, h_prev: Tensor) -> Tensor:
        if layer < self.min_layer:
            return torch.zeros(h.size(0), dtype=torch.bool, device=h.device)
        return self.confidence(decoder, layer, h, h_prev) >= self.threshold

    def flops_per_position(self, layer: int, embed_dim: int, vocab: int) -> float:
        """Matrix-product FLOPs of one decision at ``layer`` (elementwise work is not
        counted, as elsewhere in the FLOPs model)."""
        if layer < self.min_layer:
            return 0.0
        if self.measure == "softmax":
            return 2.0 * embed_dim * vocab
        if self.measure == "classifier":
            return 2.0 * embed_dim * 2
        return 0.0


def build_exit_rule(args, embed_dim: int):
    """The decoder's rule from the model options (``--decoder-exit-rule``), or None."""
    name = getattr(args, "decoder_exit_rule", "none")
    if name == "none":
        return None
    if name == "confidence":
        return ConfidenceRule(getattr(args, "exit_confidence", "softmax"), embed_dim)
    raise HashEEError(f"--decoder-exit-rule: expected one of {', '.join(RULES)}, got {name!r}")


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
