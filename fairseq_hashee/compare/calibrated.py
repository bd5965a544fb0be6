"""``hashee-compare --calibrate DELTA[,EPSILON]``: per method, the operating point Learn-then-Test certifies.

What a user decides is "I can lose at most delta of full depth's quality: which
method, at which setting, is fastest?". For every compared method this
generates the calibration split (``--calibration-subset``: ``calib`` when the
data has it, else ``valid``) with the full-depth row's checkpoint once and with
each candidate of the method's knob, computes each example's loss against the
full-depth row (``--calibrate-loss``, calibration/losses.py: ``drop``, the
signed ROUGE lost against the reference, is the budget "at most one point on
average" at delta 0.01; ``risk`` clips it at 0; ``textual`` is 1 - ROUGE against
full depth's summary), and keeps the last value fixed-sequence testing
certifies (calibration/ltt.py, ``--calibrate-p-value``; candidates after the
first that is not certified are neither tested nor generated). That value's row is
the method's row at that value: marked in the table when the comparison has
it anyway, else generated on the test split like every other row; its loss
there is measured against delta.

Candidates, safest first: a generation knob (CALM's and DAT's thresholds,
LECO's patience) takes its whole range (calibration/knobs.py: 11 thresholds)
or the values ``--calibrate-grid METHOD=V1,V2`` gives;
a training knob (ConsistentEE's alpha, HashEE's deepest decoder exit, static
depth's decoder layers) takes the values the comparison trains anyway
(``--sweep``), no extra training; a method without a knob (HashEE encoder
exits, or one run without a sweep) is its one candidate, certified or not.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..calibration.knobs import Knob
from ..calibration.losses import RANGES, describe, losses
from ..calibration.ltt import Calibration, calibrate, check_level
from ..calibration.options import add_options
from ..calibration.split import calibration_subset
from ..errors import HashEEError
from .methods import Method, Point
from .runs import Data, generate, load_json, save_json

# Knobs where a smaller value exits less (every other knob: a larger one does).
SAFER_WHEN_SMALLER = ("--consistentee-alpha",)


def add_args(parser) -> None:
    parser.add_argument(
        "--calibrate",
        metavar="DELTA[,EPSILON]",
        help="mark per method the fastest row Learn-then-Test certifies on the calibration split (epsilon default 0.1)",
    )
    add_options(parser, "calibrate-", default_loss="drop")
    parser.add_argument(
        "--calibrate-grid",
        action="append",
        default=[],
        metavar="METHOD=V1,V2",
        help="candidates of a method's generation knob instead of its whole range (11 thresholds, every patience)",
    )


@dataclass(frozen=True)
class Settings:
    delta: float
    epsilon: float
    loss: str
    grids: Dict[str, List[str]]  # method key -> its generation knob's candidates, safest first
    metric: str = "rougeL"
    p_value: str = "wsr"
    subset: str = "valid"

    def losses(self, early: dict, full: dict, lang: str) -> List[float]:
        """Per example of ``early``'s generation, the loss against ``full``'s (same examples, same order)."""
        return losses(self.loss, early["hypotheses"], full["hypotheses"], full["references"], lang, self.metric)

    def describe(self) -> str:
        return describe(self.loss, self.metric)


def _levels(text: str) -> Tuple[float, float]:
    parts = text.split(",")
    try:
        levels = [float(part) for part in parts]
    except ValueError:
        levels = []
    if len(levels) not in (1, 2):
        raise HashEEError(f"--calibrate: expected DELTA or DELTA,EPSILON (numbers in (0, 1)), got {text!r}")
    delta, epsilon = levels[0], levels[1] if len(levels) == 2 else 0.1
    return check_level("--calibrate delta", delta), check_level("--calibrate epsilon", epsilon)


def _grids(items: Sequence[str], methods: Sequence[Method]) -> Dict[str, List[str]]:
    by_key = {method.key: method for method in methods}
    grids = {}
    for item in items:
        key, sep, listed = item.partition("=")
        if not sep or key not in by_key:
            raise HashEEError(f"--calibrate-grid {item!r}: expected METHOD=V1,V2 with a method among --methods")
        method = by_key[key]
        if method.knob is None or method.trained_knob:
            raise HashEEError(
                f"--calibrate-grid: {key} has no generation knob; its candidates are the runs the comparison trains"
            )
        knob = Knob(method.knob, *method.knob_range)
        grids[key] = knob.safest_first([v.strip() for v in listed.split(",") if v.strip()], f"--calibrate-grid {key}")
    return grids


def settings(args, data: Path, pair: Tuple[str, str], methods: Sequence[Method]) -> Optional[Settings]:
    """``--calibrate*`` checked before anything trains (levels, grids, the calibration split); None
    without ``--calibrate``."""
    if args.calibrate is None:
        if args.calibrate_grid:
            raise HashEEError("--calibrate-grid: only with --calibrate")
        return None
    delta, epsilon = _levels(args.calibrate)
    grids = _grids(args.calibrate_grid, methods)
    subset, _ = calibration_subset(data, pair, args.calibration_subset, "--calibration-subset")
    loss, metric, p_value = args.calibrate_loss, args.calibrate_metric, args.calibrate_p_value
    return Settings(delta, epsilon, loss, grids, metric, p_value, subset)


@dataclass
class Decision:
    """One method's calibration: the candidates tested (safest first) and what Learn-then-Test said."""

    method: Method
    candidates: List[Point]
    result: Calibration

    @property
    def point(self) -> Optional[Point]:
        """The method's row at the certified value; None when none is."""
        return None if self.result.chosen is None else self.candidates[self.result.chosen]


def _safety(method: Method, value: Optional[str]) -> float:
    if value is None:  # the method's own default
        value = method.default_value
        if value is None:  # every layer available: the safest
            return float("inf")
    return -float(value) if method.knob in SAFER_WHEN_SMALLER else float(value)


def candidates(method: Method, swept: Sequence[Point], grid: Optional[Sequence[str]] = None) -> List[Point]:
    """The values calibration tests for ``method``, safest first (``swept``: its rows of the comparison;
    ``grid``: a generation knob's candidates, safest first, instead of its whole range)."""
    if method.knob is not None and not method.trained_knob:
        return [Point(method, value) for value in grid or Knob(method.knob, *method.knob_range).default_grid()]
    return sorted(swept, key=lambda point: -_safety(method, point.value))


def _generate_split(data: Data, checkpoint: Path, folder: Path, options: List[str], subset: str) -> dict:
    """The calibration split's summaries (kept when generated before with the same checkpoint and options)."""
    settings = {"checkpoint": str(checkpoint), "options": options, "generate": data.generate_options, "subset": subset}
    cached = load_json(folder / "result.json")
    if cached is None or cached.get("settings") != settings:
        cached = generate(data, checkpoint, folder, options, subset)
        cached["settings"] = settings
        save_json(folder / "result.json", cached)
    return cached


def decide(
    calibration: Settings,
    lang: str,
    data: Data,
    work: Path,
    points: Sequence[Point],
    checkpoints: Dict[str, Path],
    say: Callable[[str], None],
) -> List[Decision]:
    """Calibrate every compared method but full depth on the calibration split."""
    folder, subset = work / "calibrate", calibration.subset

    def summaries(point: Point) -> dict:
        name = point.name.replace("@", "-")
        return _generate_split(data, checkpoints[point.stages[-1].name], folder / name, point.generate_options, subset)

    full = summaries(points[0])
    methods = list(dict.fromkeys(point.method for point in points[1:]))
    decisions = []
    for number, method in enumerate(methods, start=1):
        tested = candidates(method, [p for p in points if p.method == method], calibration.grids.get(method.key))
        say(f"== [calibrate {number}/{len(methods)}] {method.label}: up to {len(tested)} values on {subset}")
        per_value = []
        for index, point in enumerate(tested):
            run = summaries(point)
            if run["ids"] != full["ids"]:
                raise HashEEError(f"calibrating {point.name}: generated other {subset} examples than full depth")
            per_value.append(calibration.losses(run, full, lang))
            values = [p.value or "default" for p in tested[: index + 1]]
            levels = (calibration.delta, calibration.epsilon, calibration.p_value, RANGES[calibration.loss])
            result = calibrate(values, per_value, *levels)
            if result.chosen != index:  # fixed-sequence testing stops here: the rest are not generated
                break
        decisions.append(Decision(method, tested[: len(per_value)], result))
    return decisions


def add_rows(decisions: Sequence[Decision], points: List[Point]) -> None:
    """The certified values the comparison does not run anyway, as rows of their own (appended)."""
    for decision in decisions:
        if decision.point is not None and decision.point not in points:
            points.append(decision.point)


def measure(decisions: Sequence[Decision], rows: List[dict], calibration: Settings, lang: str) -> None:
    """Mark each certified row: its calibration and its mean loss on the test split against the full-depth row."""
    full = rows[0]
    for decision in decisions:
        point = decision.point
        if point is None:
            continue
        row = next(r for r in rows if r["label"] == point.label)
        on_test = calibration.losses(row, full, lang)
        row["calibration"] = {
            "delta": decision.result.delta,
            "p_value": decision.result.p_values[decision.result.chosen],
            "test_loss": sum(on_test) / len(on_test),
        }


def summary(decisions: Sequence[Decision], calibration: Optional[Settings]) -> List[dict]:
    """compare.json's record of every candidate's mean loss and p-value, per method."""
    return [
        {
            "method": d.method.key,
            "loss": calibration.loss,
            "metric": calibration.metric,
            "p_value": calibration.p_value,
            "subset": calibration.subset,
            "delta": d.result.delta,
            "epsilon": d.result.epsilon,
            "examples": d.result.n,
            "chosen": d.result.value,
            "candidates": [
                {"value": v, "mean_loss": r, "p_value": p}
                for v, r, p in zip(d.result.values, d.result.risks, d.result.p_values)
            ],
        }
        for d in decisions
    ]


def section(decisions: Sequence[Decision], rows: List[dict], calibration: Settings) -> str:
    """The table's "at delta" section: per method the certified value (its row is marked *), its loss on
    test and its speed-ups."""
    if not decisions:
        return ""
    delta, epsilon, n = decisions[0].result.delta, decisions[0].result.epsilon, decisions[0].result.n
    lines = [
        f"* at delta {delta:g} (epsilon {epsilon:g}; expected {calibration.describe()}; "
        f"{calibration.p_value} p-values on {n} {calibration.subset} examples), the fastest value certified per method:"
    ]
    by_label = {row["label"]: row for row in rows}
    for decision in decisions:
        point, result = decision.point, decision.result
        if point is None:
            lines.append(f"  {decision.method.label}: no value certified (first p-value {result.p_values[0]:.3g})")
            continue
        row = by_label[point.label]
        lines.append(
            f"  {point.label}: p {row['calibration']['p_value']:.3g}, mean loss on test "
            f"{row['calibration']['test_loss']:.3f} (delta {delta:g}), total x {row['total_flops_x']:.2f}, wall x "
            f"{row['wall_x']:.2f}, tok x {row['token_x']:.2f}, step x {row['step_x']:.2f}"
        )
    return "\n".join(lines)
