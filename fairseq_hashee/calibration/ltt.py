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

Hoeffding-Bentkus sees only the mean, so it assumes the worst variance a loss
in [0, 1] with that mean can have. The signed ROUGE drop (losses.py) lives in
[-1, 1] with its mass near 0 (sd about 0.13 on the demo): mapped to [0, 1] its
mean sits near 1/2, where Hoeffding-Bentkus needs tens of thousands of
examples to tell 0.004 from 0.02. The variance-adaptive alternative (``wsr``)
is Waudby-Smith and Ramdas's betting test of a bounded mean ("Estimating means
of bounded random variables by betting", 2020), as Bates et al. (RCPS, 2021,
their "WSR" bound; LTT admits any valid p-value) apply it. For losses ``L_1..L_n``
in [0, 1], in the calibration split's order, and ``t = 1..n``:

- running mean and variance with a prior of one pseudo-example at 1/2 (variance
  1/4): ``mu_t = (1/2 + sum_{i<=t} L_i) / (t + 1)``, ``s2_t = (1/4 + sum_{i<=t}
  (L_i - mu_i)^2) / (t + 1)``, ``s2_0 = 1/4``;
- the bet, predictable (it uses only ``L_1..L_{t-1}``): ``lambda_t = min(1,
  sqrt(2 ln(1/epsilon) / (n s2_{t-1})))``;
- the capital ``K_t = prod_{i<=t} (1 - lambda_i (L_i - delta))``.

Under ``H: E[L] >= delta`` each factor has conditional mean at most 1 and is
positive (``lambda <= 1``, ``L - delta < 1``), so ``K`` is a nonnegative
supermartingale with ``K_0 = 1`` and Ville's inequality gives ``P(max_t K_t >=
1/epsilon) <= epsilon``: ``p = min(1, 1 / max_t K_t)`` is valid at level
epsilon (the bet depends on epsilon, so it is a p-value for that level only,
which is all fixed-sequence testing at epsilon asks). Only the direction
"the loss is smaller than delta" earns capital: the one-sided half of the
hedged process, whose other half would test ``E[L] <= delta``. A loss declared
in another range ``[a, b]`` (the drop: [-1, 1]) is mapped to ``(L - a) / (b -
a)`` with delta mapped alike, for both p-values.
"""

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import HashEEError

P_VALUES = ("hb", "wsr")


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


def wsr_log_capital(losses, delta: float, epsilon: float) -> np.ndarray:
    """``ln K_1 .. ln K_n`` of the betting test of ``E[L] > delta`` (module docstring), along the last
    axis of ``losses`` (in [0, 1], in order); earlier axes are independent calibration sets."""
    x = np.asarray(losses, dtype=float)
    n = x.shape[-1]
    seen = np.arange(1, n + 1) + 1.0  # t + 1: the examples so far and the pseudo-example
    mean = (0.5 + np.cumsum(x, axis=-1)) / seen
    variance = (0.25 + np.cumsum((x - mean) ** 2, axis=-1)) / seen
    before = np.concatenate([np.full(x.shape[:-1] + (1,), 0.25), variance[..., :-1]], axis=-1)
    bet = np.minimum(1.0, np.sqrt(2.0 * math.log(1.0 / epsilon) / (n * before)))
    return np.cumsum(np.log1p(-bet * (x - delta)), axis=-1)


def wsr_p_values(losses, delta: float, epsilon: float) -> np.ndarray:
    """``min(1, 1 / max_t K_t)`` per calibration set (the last axis of ``losses``: its examples)."""
    peak = wsr_log_capital(losses, delta, epsilon).max(axis=-1)
    return np.exp(-np.maximum(peak, 0.0))


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
    risks: List[float]  # mean loss on the calibration set, in the loss's own units
    p_values: List[float]
    chosen: Optional[int]  # index into values; None: no value certified, keep full depth
    n: int
    delta: float
    epsilon: float
    p_value: str = "wsr"  # which p-value (P_VALUES)

    @property
    def value(self) -> Optional[str]:
        return None if self.chosen is None else self.values[self.chosen]

    @property
    def tested(self) -> int:
        """How many candidates fixed-sequence testing looked at (rejected ones, plus the one it stopped at)."""
        stopped_after = 0 if self.chosen is None else self.chosen + 1
        return min(len(self.values), stopped_after + 1)


def p_values(kind: str, losses: np.ndarray, delta: float, epsilon: float) -> List[float]:
    """The ``kind`` p-value of ``E[L] > delta`` for each row of ``losses`` (in [0, 1])."""
    if kind == "wsr":
        return wsr_p_values(losses, delta, epsilon).tolist()
    return [hb_p_value(math.fsum(row) / len(row), len(row), delta) for row in losses.tolist()]


def calibrate(
    values: Sequence[str],
    losses: Sequence[Sequence[float]],
    delta: float,
    epsilon: float,
    p_value: str = "wsr",
    loss_range: Tuple[float, float] = (0.0, 1.0),
) -> Calibration:
    """Learn-then-Test over ``values`` (safest first), each with its per-example ``losses`` in
    ``loss_range`` on the same ``n`` calibration examples, with the ``p_value`` of P_VALUES."""
    check_level("--delta", delta)
    check_level("--epsilon", epsilon)
    if p_value not in P_VALUES:
        raise HashEEError(f"--p-value: expected one of {', '.join(P_VALUES)}, got {p_value!r}")
    if not values or len(values) != len(losses):
        raise HashEEError(f"calibration: {len(values)} candidate values but {len(losses)} lists of losses")
    n = len(losses[0])
    if n == 0:
        raise HashEEError("calibration: the calibration split has no examples")
    low, high = loss_range
    for value, row in zip(values, losses):
        if len(row) != n:
            raise HashEEError(f"calibration: value {value} has {len(row)} losses, the first {n}")
        outside = [loss for loss in row if not low <= loss <= high]
        if outside:
            raise HashEEError(
                f"--p-value {p_value}: value {value} has a loss {outside[0]:g} outside the loss's declared range "
                f"[{low:g}, {high:g}]"
            )
    risks = [math.fsum(row) / n for row in losses]
    scaled = (np.asarray(losses, dtype=float) - low) / (high - low)
    p = p_values(p_value, scaled, (delta - low) / (high - low), epsilon)
    return Calibration(list(values), risks, p, fixed_sequence(p, epsilon), n, delta, epsilon, p_value)
