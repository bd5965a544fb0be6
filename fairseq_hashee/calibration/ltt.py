"""Learn-then-Test: the fastest knob value whose expected loss is at most delta, with probability 1 - epsilon.

Each candidate value ``j`` of a knob has a null hypothesis ``H_j: R_j > delta``
(its expected per-example loss exceeds delta). Rejecting ``H_j`` at level
epsilon on ``n`` calibration examples certifies the value. The p-value of
``H_j`` from the empirical risk ``Rhat_j`` (mean of losses in [0, 1]) is
Hoeffding-Bentkus (LTT, section 3; CALM, appendix), the smaller of

- Hoeffding's: ``exp(-n * h(min(Rhat, delta), delta))`` with the Bernoulli
  relative entropy ``h(a, b) = a ln(a/b) + (1-a) ln((1-a)/(1-b))`` (at least
  ``2 (delta - Rhat)^2`` by Pinsker, so never larger than the plainer
  ``exp(-2n (delta - Rhat)_+^2)``);
- Bentkus's: ``e * P(Binomial(n, delta) <= ceil(n * Rhat))``.

Both are valid for any losses in [0, 1], so their minimum is too (each is a
super-uniform bound under ``H_j``; LTT proposition 3). Many values are tested
on the same data, so the family-wise error is controlled by fixed-sequence
testing: walk the candidates from the safest (closest to full depth) to the
fastest, reject while ``p_j <= epsilon`` and stop at the first value that is
not rejected, even if a later one would be. The chosen value is the last one
rejected. Then, over the draw of the calibration set, ``P(R_chosen > delta) <=
epsilon``, provided calibration and test examples are exchangeable (e.g. drawn
from the same distribution independently). The order must be fixed before
looking at the calibration losses; it need not be monotone in risk.
"""

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

from ..errors import HashEEError


def check_level(option: str, value: float) -> float:
    """A delta or epsilon: a number strictly between 0 and 1."""
    if not 0.0 < value < 1.0:
        raise HashEEError(f"{option}: must be strictly between 0 and 1, got {value}")
    return value


def _relative_entropy(a: float, b: float) -> float:
    """Bernoulli KL divergence KL(a || b), with 0 ln 0 = 0; ``b`` in (0, 1)."""
    total = 0.0
    if a > 0:
        total += a * math.log(a / b)
    if a < 1:
        total += (1 - a) * math.log((1 - a) / (1 - b))
    return total


def hoeffding_p_value(risk: float, n: int, delta: float) -> float:
    return math.exp(-n * _relative_entropy(min(risk, delta), delta))


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k), summed term by term in log space (exact up to float rounding)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    return math.fsum(math.exp(math.log(math.comb(n, i)) + i * log_p + (n - i) * log_q) for i in range(k + 1))


def bentkus_p_value(risk: float, n: int, delta: float) -> float:
    # n * risk is a sum of losses: rounding it to 9 decimals keeps float noise (3.0000000004) from
    # moving the ceiling up by one.
    return math.e * binomial_cdf(math.ceil(round(n * risk, 9)), n, delta)


def hb_p_value(risk: float, n: int, delta: float) -> float:
    """Hoeffding-Bentkus p-value of ``R > delta`` from the mean ``risk`` of ``n`` losses in [0, 1]."""
    return min(1.0, hoeffding_p_value(risk, n, delta), bentkus_p_value(risk, n, delta))


def fixed_sequence(p_values: Sequence[float], epsilon: float) -> Optional[int]:
    """Index of the last hypothesis rejected walking from the first (the safest), stopping at the
    first ``p > epsilon``; None when the first is not rejected."""
    chosen = None
    for index, p in enumerate(p_values):
        if p > epsilon:
            break
        chosen = index
    return chosen


@dataclass
class Calibration:
    """What Learn-then-Test decided, candidate by candidate (safest first)."""

    values: List[str]
    risks: List[float]  # mean loss on the calibration set
    p_values: List[float]
    chosen: Optional[int]  # index into values; None: no value certified, keep full depth
    n: int
    delta: float
    epsilon: float

    @property
    def value(self) -> Optional[str]:
        return None if self.chosen is None else self.values[self.chosen]

    @property
    def tested(self) -> int:
        """How many candidates fixed-sequence testing looked at (rejected ones, plus the one it stopped at)."""
        stopped_after = 0 if self.chosen is None else self.chosen + 1
        return min(len(self.values), stopped_after + 1)


def calibrate(values: Sequence[str], losses: Sequence[Sequence[float]], delta: float, epsilon: float) -> Calibration:
    """Learn-then-Test over ``values`` (safest first), each with its per-example ``losses`` in [0, 1]
    on the same ``n`` calibration examples."""
    check_level("--delta", delta)
    check_level("--epsilon", epsilon)
    if not values or len(values) != len(losses):
        raise HashEEError(f"calibration: {len(values)} candidate values but {len(losses)} lists of losses")
    n = len(losses[0])
    if n == 0:
        raise HashEEError("calibration: the calibration split has no examples")
    for value, row in zip(values, losses):
        if len(row) != n:
            raise HashEEError(f"calibration: value {value} has {len(row)} losses, the first {n}")
        if any(not 0.0 <= loss <= 1.0 for loss in row):
            raise HashEEError(f"calibration: value {value} has a loss outside [0, 1]")
    risks = [math.fsum(row) / n for row in losses]
    p_values = [hb_p_value(risk, n, delta) for risk in risks]
    return Calibration(list(values), risks, p_values, fixed_sequence(p_values, epsilon), n, delta, epsilon)
