"""FREE's adaptive threshold estimator: a two-component Beta mixture over shallow confidences.

FREE (Bae et al., EMNLP 2023, section 4.3; released code ``util/bmm.py``)
chooses the shallow exit's threshold from what decoding shows it: for every
position whose deep layers ran (the step that went deep and the positions it
took along), the shallow exit's confidence ``c`` and whether its prediction
agreed with the deep one. Component 1 models the confidences of agreeing
positions, component 0 those of the others, each a Beta fitted by the method
of moments (supervised: every sample belongs to its own component with weight
``1 - w`` and to the other with ``w``, w = 1e-4 / (0.2 + 1e-4), as the released
code's responsibilities come out). The threshold is the lowest value on a grid
of ``resolution`` points over [``low``, ``high``] (0.3, 0.9) from which the
component of the larger mean is more likely than ``zeta`` (0.4):
``pdf_agree(c) / (pdf_agree(c) + pdf_other(c)) > zeta``, counted from the top
of the grid as the released code counts.

Deviations: a component whose weighted variance is zero (or whose moments give
no valid Beta) keeps its previous parameters, where the released code would
divide by zero; the Beta density is computed with ``math.lgamma`` (no scipy).
"""

import math
from typing import Optional, Sequence

import numpy as np

# The released estimator's constants (util/bmm.py).
_EPS = 1e-4
_OWN, _OTHER = 0.2 / (0.2 + _EPS), _EPS / (0.2 + _EPS)
LOW, HIGH, RESOLUTION, ZETA = 0.3, 0.9, 10, 0.4
MAX_FITS = 300  # FREE refits at the start of each generation, at most this many times


def beta_pdf(x: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    log_norm = math.lgamma(alpha) + math.lgamma(beta) - math.lgamma(alpha + beta)
    return np.exp((alpha - 1) * np.log(x) + (beta - 1) * np.log1p(-x) - log_norm)


def weighted_beta_moments(x: np.ndarray, weights: np.ndarray) -> Optional[tuple]:
    """(alpha, beta) whose mean and variance are the weighted ones of ``x``; None if there are none."""
    mean = float(np.sum(weights * x) / np.sum(weights))
    var = float(np.sum(weights * (x - mean) ** 2) / np.sum(weights))
    if var <= 0 or not 0 < mean < 1:
        return None
    alpha = mean * (mean * (1 - mean) / var - 1)
    beta = alpha * (1 - mean) / mean
    return (alpha, beta) if alpha > 0 and beta > 0 else None


class BetaMixture:
    """The two components, fitted on every (confidence, agreement) seen so far."""

    def __init__(self):
        # The released initialisation: disagreeing positions lean low, agreeing ones high.
        self.alphas = np.array([1.0, 2.0])
        self.betas = np.array([2.0, 1.0])
        self.fits = 0

    def fit(self, confidences: Sequence[float], agree: Sequence[bool]) -> None:
        x = np.clip(np.asarray(confidences, dtype=np.float64), _EPS, 1 - _EPS)
        labels = np.asarray(agree, dtype=bool)
        for component, members in ((0, ~labels), (1, labels)):
            weights = np.where(members, _OWN, _OTHER)
            moments = weighted_beta_moments(x, weights)
            if moments is not None:
                self.alphas[component], self.betas[component] = moments
        self.fits += 1

    def threshold(self, low: float = LOW, high: float = HIGH, resolution: int = RESOLUTION, zeta: float = ZETA):
        grid = np.linspace(low, high, resolution)
        means = self.alphas / (self.alphas + self.betas)
        agree = int(means.argmax())
        p_agree = beta_pdf(grid, self.alphas[agree], self.betas[agree])
        p_other = beta_pdf(grid, self.alphas[1 - agree], self.betas[1 - agree])
        total = p_agree + p_other
        share = np.divide(p_agree, total, out=np.zeros_like(total), where=total > 0)  # neither: not above
        above = int(np.sum(share > zeta))
        return float(grid[min(max(0, resolution - above), resolution - 1)])
