"""What the comparison reports: the table, side-by-side summaries, the JSON and the frontier plot.

A row is one method at one value of its knob. ROUGE is computed on the whole
test split; FLOPs speed-ups are the plugin's own report; ``wall x`` is the
full-depth model's generation time over the row's, measured by fairseq-generate's
own timer (model loading excluded) in the same comparison run, the median over
``--timing-rounds`` interleaved rounds. ``tok x`` is the same per generated
token (the row's tokens per second over full depth's). ``step x`` is the same
per decoder call, a step of beam search over a batch: beam search runs until
every hypothesis of the batch has ended, so two models whose summaries are as
long can run very different numbers of steps (on the built-in corpus, 78 to 183
for 100 documents), and wall x follows that count more than what a step
computes. Step x divides the count out, but spreads the encoder's and each
batch's fixed work over the steps, so a row running few steps looks slower per
step than it is; only the FLOPs are exact. ``eff.`` is step x over total FLOPs x.
"""

import logging
import statistics
import textwrap
from typing import Dict, List

from ..errors import HashEEError
from ..io_utils import atomic_write

NOTE = (
    "(enc/dec/total x: FLOPs speed-up; wall x: wall-clock speed-up of generating the test split over full depth;\n"
    " tok x: the same per generated token; step x: the same per decoder step (beam search over a batch);\n"
    " eff. = step x / total x)"
)


def wall_speedups(rows: List[dict]) -> None:
    """Set each row's ``wall_x`` (per timing round, full depth's seconds over the row's; the median),
    ``token_x`` and ``step_x`` (the same per generated token and per decoder call) and ``efficiency``."""
    full = rows[0]

    def per(count: str, row: dict) -> float:
        return row["wall_x"] * row[count] / full[count] if full[count] else float("nan")

    for row in rows:
        ratios = [reference / mine for reference, mine in zip(full["seconds"], row["seconds"]) if mine > 0]
        row["wall_x"] = statistics.median(ratios) if ratios else float("nan")
        row["token_x"], row["step_x"] = per("tokens", row), per("decoder_calls", row)
        row["efficiency"] = row["step_x"] / row["total_flops_x"] if row["total_flops_x"] else float("nan")


CERTIFIED = " *"  # after the label of a row --calibrate certifies (its section follows the table)


def _cell(row: dict) -> str:
    return row["label"] + (CERTIFIED if "calibration" in row else "")


def _label_width(rows: List[dict]) -> int:
    return max([40] + [len(_cell(row)) for row in rows])


def header(width: int = 40) -> str:
    return (
        f"{'method':<{width}} {'R-1':>6} {'R-2':>6} {'R-L':>6} {'enc x':>6} {'dec x':>6} "
        f"{'total x':>8} {'wall x':>7} {'tok x':>6} {'step x':>7} {'eff.':>5}"
    )


def table(rows: List[dict]) -> str:
    width = _label_width(rows)
    lines = [header(width)]
    for row in rows:
        lines.append(
            f"{_cell(row):<{width}} {row['rouge1']:6.2f} {row['rouge2']:6.2f} {row['rougeL']:6.2f} "
            f"{row['encoder_flops_x']:5.2f}x {row['decoder_flops_x']:5.2f}x {row['total_flops_x']:7.2f}x "
            f"{row['wall_x']:6.2f}x {row['token_x']:5.2f}x {row['step_x']:6.2f}x {row['efficiency']:5.2f}"
        )
    return "\n".join(lines + [NOTE])


def side_by_side(rows: List[dict], documents: Dict[int, str], count: int = 3, width: int = 100) -> str:
    """The first ``count`` test documents (by id, not chosen), with the reference and every row's summary."""
    ids = rows[0]["ids"][:count]
    label_width = _label_width(rows)
    blocks = []
    for index in ids:
        lines = [f"-- test document {index}: " + textwrap.shorten(documents.get(index, ""), width, placeholder=" ...")]
        lines.append(f"   {'reference':<{label_width}} {rows[0]['references'][rows[0]['ids'].index(index)]}")
        for row in rows:
            if index in row["ids"]:
                lines.append(f"   {row['label']:<{label_width}} {row['hypotheses'][row['ids'].index(index)]}")
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


def plot(rows: List[dict], path: str, title: str) -> None:
    """ROUGE-L against the wall-clock speed-up per decoding step (step x: what the method decides,
    where wall x also carries when each model's beams stop), one curve per method."""
    # fairseq's logging setup lets matplotlib print at DEBUG level, from its import on
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise HashEEError("--plot needs matplotlib (pip install 'fairseq-hashee[bench]')") from None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    methods: Dict[str, List[dict]] = {}
    for row in rows:
        methods.setdefault(row["method_label"], []).append(row)
    for label, points in methods.items():
        points = sorted(points, key=lambda r: r["step_x"])
        xs, ys = [p["step_x"] for p in points], [p["rougeL"] for p in points]
        ax.plot(xs, ys, marker="*" if label == rows[0]["method_label"] else "o", markersize=8, label=label)
        for point in points:
            if point.get("value") is not None:
                ax.annotate(point["value"], (point["step_x"], point["rougeL"]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")  # fmt: skip
    chosen = [row for row in rows if "calibration" in row]
    if chosen:
        ax.scatter(
            [r["step_x"] for r in chosen],
            [r["rougeL"] for r in chosen],
            s=140,
            facecolors="none",
            edgecolors="black",
            marker="s",
            label=f"certified (delta {chosen[0]['calibration']['delta']:g})",
        )
    ax.axvline(1.0, color="grey", lw=0.6, ls=":")
    ax.set_xlabel("wall-clock speed-up per decoding step over full depth (step x)")
    ax.set_ylabel("ROUGE-L")
    ax.set_title(textwrap.fill(title, 90), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_write(path, binary=True) as out:
        fig.savefig(out, format="png", dpi=130)
    plt.close(fig)
