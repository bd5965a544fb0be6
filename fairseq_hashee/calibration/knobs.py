"""The knob a method is calibrated or swept by: its option, the values it takes, which end is safest.

A generation-time knob of a trained model with a dynamic decoder exit rule is
``--exit-threshold`` (CALM's confidences, DAT's halting, ConsistentEE's
policies: a position exits when its score reaches the threshold, so a higher
threshold exits less) or, for LECO's agreement rule, ``--exit-patience`` (more
agreeing heads needed: exits less). Either way the largest value is the
safest, and candidates are tested from it down. HashEE's deepest decoder exit
and static depth are training options: each value is its own trained model,
so they are calibrated over trained runs, not by generating one checkpoint.
"""

import argparse
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

from ..errors import HashEEError
from ..exits import build_exit_rule
from ..models.truncation import checkpoint_depth

GRID_STEPS = 10  # a threshold's default candidates: its range cut in 10 steps, 11 values


@dataclass(frozen=True)
class Knob:
    """An option's values: ``low..high`` (no upper bound when ``high`` is None), integers or reals."""

    option: str
    low: float
    high: Optional[float] = None
    integer: bool = False

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        return f"{kind} in {self.low}..{self.high}" if self.high is not None else f"{kind} >= {self.low}"

    def parse(self, text: str, where: str) -> Union[int, float]:
        """``text`` as a value of the knob, or one error naming ``where`` (the option it came from)."""
        try:
            value = int(text) if self.integer else float(text)
        except ValueError:
            value = None
        inside = value is not None and math.isfinite(value) and value >= self.low
        if not inside or (self.high is not None and value > self.high):
            raise HashEEError(f"{where}: {self.option} {text!r} is not {self.describe()}")
        return value

    def safest_first(self, texts: Sequence[str], where: str) -> List[str]:
        """The candidate values, checked, largest (safest) first; a repeated value is refused."""
        values = [self.parse(text, where) for text in texts]
        if not values:
            raise HashEEError(f"{where}: no values")
        if len(set(values)) != len(values):
            raise HashEEError(f"{where}: a value is given twice")
        return [f"{value:g}" for value in sorted(values, reverse=True)]

    def default_grid(self) -> List[str]:
        """Every integer of the range, or the range in GRID_STEPS equal steps; safest first."""
        if self.integer:
            return [str(value) for value in range(int(self.high), int(self.low) - 1, -1)]
        step = (self.high - self.low) / GRID_STEPS
        return [f"{round(self.high - i * step, 6):g}" for i in range(GRID_STEPS + 1)]


def _model_args(state: dict) -> argparse.Namespace:
    model = (state.get("cfg") or {}).get("model") or state.get("args")
    return argparse.Namespace(**model) if isinstance(model, dict) else model


def checkpoint_knob(state: dict, checkpoint: str) -> Knob:
    """The generation knob of a checkpoint's decoder exit rule; one error when it has none."""
    args = _model_args(state)
    rule_name = getattr(args, "decoder_exit_rule", "none") if args is not None else "none"
    layers = checkpoint_depth(state["model"], "decoder.")
    embed_dim = state["model"]["decoder.embed_tokens.weight"].size(1)
    rule = build_exit_rule(args, embed_dim, layers) if rule_name != "none" else None
    if rule is None:
        raise HashEEError(
            f"{checkpoint}: no dynamic decoder exit rule (trained without --decoder-exit-rule), so no generation "
            "knob to calibrate; HashEE's deepest decoder exit and static depth are set by training"
        )
    if hasattr(rule, "set_patience"):
        return Knob("--exit-patience", 0, layers - 2, integer=True)
    if rule.threshold_range is None:
        raise HashEEError(f"{checkpoint}: its {rule.name} rule takes neither a threshold nor a patience to calibrate")
    return Knob("--exit-threshold", *rule.threshold_range)
