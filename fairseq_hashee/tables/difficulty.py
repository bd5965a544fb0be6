"""The difficulty table: decoder exits from how early a multi-exit model predicts each position.

A frequency or random hash never looks at how hard a position is; a dynamic
rule (CALM) does, at the price of a head and a threshold per layer. This table
keeps HashEE's lookup and moves the looking to build time: a trained multi-exit
checkpoint reads the training split teacher-forced, each target position gets
the first layer whose exit head is good enough there (``first_adequate_layers``),
and each *input* token type (the decoder's table is indexed by the input token,
docs/design.md section 1) gets the mean over its occurrences, pulled toward the
global mean when it has few (``type_scores``). ``difficulty_table`` turns those
scores into layers with one shift chosen so that the mean exit over the
training occurrences meets a target, the table's single knob. Pure functions of
the counts: every rank builds the same table (docs/design.md section 2).
"""

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import HashEEError

STATISTICS = ("correct", "margin")
DEFAULT_STATISTIC = "correct"
DEFAULT_MARGIN = 0.5  # nats, of the margin statistic
# A type seen n times scores (sum + PRIOR * global mean) / (n + PRIOR): a type seen
# once or twice says little about itself, so it sits near the average position.
DEFAULT_PRIOR = 10.0
_SHIFT_STEPS = 60  # bisection steps of the shift: far below any gap between two scores that matter


def first_adequate_layers(
    logits: Sequence[Tensor], targets: Tensor, statistic: str = DEFAULT_STATISTIC, margin: float = DEFAULT_MARGIN
) -> Tensor:
    """For each position, the first layer (1-based) whose head is adequate there.

    ``logits``: one (N, V) tensor per layer 1..L; ``targets`` (N,) the reference
    next tokens. ``correct``: the head's argmax is the reference (L when no layer
    gets it: a position no head predicts is as hard as they come); ``margin``: the
    reference's negative log-likelihood is within ``margin`` nats of the top
    layer's (the top layer always is, so no fallback is needed).
    """
    if statistic == "correct":
        adequate = torch.stack([layer.argmax(dim=-1) == targets for layer in logits])
        adequate[-1] = True
    elif statistic == "margin":
        nll = torch.stack(
            [-F.log_softmax(layer.float(), dim=-1).gather(-1, targets[:, None])[:, 0] for layer in logits]
        )
        adequate = nll <= nll[-1] + margin
    else:
        raise HashEEError(f"--difficulty-statistic: expected one of {', '.join(STATISTICS)}, got {statistic!r}")
    # argmax returns the first maximum: the first adequate layer.
    return adequate.to(torch.uint8).argmax(dim=0) + 1


@dataclass
class DifficultyStats:
    """Per input-type sums of the first adequate layer of its positions, and the positions counted."""

    sums: np.ndarray  # (V,) float64
    counts: np.ndarray  # (V,) int64

    @classmethod
    def empty(cls, vocab_size: int) -> "DifficultyStats":
        return cls(np.zeros(vocab_size, dtype=np.float64), np.zeros(vocab_size, dtype=np.int64))

    def add(self, input_tokens: Tensor, layers: Tensor) -> None:
        """Count positions whose input tokens are ``input_tokens`` (N,) and first adequate layers ``layers`` (N,)."""
        ids = input_tokens.cpu().numpy()
        size = len(self.counts)
        self.counts += np.bincount(ids, minlength=size)
        self.sums += np.bincount(ids, weights=layers.cpu().numpy().astype(np.float64), minlength=size)


def type_scores(stats: DifficultyStats, prior: float = DEFAULT_PRIOR) -> np.ndarray:
    """Each type's smoothed mean first adequate layer: ``(sum + prior * g) / (count + prior)``,
    ``g`` the mean over every position counted."""
    total = stats.counts.sum()
    if total == 0:
        raise HashEEError("difficulty table: the split has no target positions to measure")
    overall = stats.sums.sum() / total
    return (stats.sums + prior * overall) / (stats.counts + prior)


def _layers_at(scores: np.ndarray, buckets: np.ndarray, shift: float) -> np.ndarray:
    """The bucket nearest each shifted score (the deeper one on a tie)."""
    distance = np.abs((scores + shift)[:, None] - buckets[None, :])
    nearest = distance.shape[1] - 1 - np.argmin(distance[:, ::-1], axis=1)
    return buckets[nearest]


def difficulty_table(
    scores: np.ndarray,
    counts: np.ndarray,
    special: np.ndarray,
    buckets: Sequence[int],
    num_layers: int,
    mean_exit: float,
    option: str = "--difficulty-mean-exit",
) -> Tuple[np.ndarray, float]:
    """The table whose mean exit over the counted occurrences is nearest ``mean_exit``, and that mean.

    A type seen at least once and not special gets the bucket nearest ``score + c``,
    one shift ``c`` for every type; special and unseen types get ``L`` and count at
    ``L`` in the mean (the decoder's first input, ``</s>``, is one of them). The
    mean grows with ``c`` in steps; the bisection finds the step that straddles the
    target, and the nearer side wins (the deeper on a tie). A target below what the
    lowest bucket allows gives that lowest table.
    """
    if not 1 <= mean_exit <= num_layers:
        raise HashEEError(f"{option}: {mean_exit:g} is outside the decoder's layers 1..{num_layers}")
    buckets = np.asarray(sorted(buckets), dtype=np.int64)
    table = np.full(len(counts), num_layers, dtype=np.int64)
    hashable = np.flatnonzero((counts > 0) & ~special)
    total = counts.sum()
    fixed = (total - counts[hashable].sum()) * num_layers

    def table_at(shift: float) -> Tuple[np.ndarray, float]:
        layers = _layers_at(scores[hashable], buckets, shift)
        return layers, (fixed + (counts[hashable] * layers).sum()) / total

    low, high = -float(num_layers + 1), float(num_layers + 1)  # every type at the lowest / highest bucket
    for _ in range(_SHIFT_STEPS):
        middle = (low + high) / 2
        if table_at(middle)[1] >= mean_exit:
            high = middle
        else:
            low = middle
    (below, below_mean), (above, above_mean) = table_at(low), table_at(high)
    layers, achieved = (below, below_mean) if mean_exit - below_mean < above_mean - mean_exit else (above, above_mean)
    table[hashable] = layers
    return table, float(achieved)


def header_comments(statistic: str, margin: float, prior: float) -> List[str]:
    """What a difficulty table file says of how it was built (its header's comment lines)."""
    adequate = (
        "the first layer whose exit head's argmax is the reference next token (L when none is)"
        if statistic == "correct"
        else f"the first layer whose reference next-token NLL is within {margin:g} nats of the top layer's"
    )
    return [
        f"difficulty of a target position: {adequate}, the checkpoint's heads reading the split teacher-forced",
        f"score of an input type: (sum over its positions + {prior:g} * global mean) / (its positions + {prior:g})",
        "exit of a type: the bucket nearest score + c, one shift c for all types, chosen so that the mean exit "
        "over the split's positions (special and unseen types at L) is nearest mean_exit; achieved: its value",
    ]
