"""What the benchmark reports: one row per configuration and setting, the targets, the table and the plot.

Two wall-clock figures per row, neither hiding the other:

- ``wall_speedup``: end to end, over stock fairseq BART as a user runs it
  (every kernel choice of the plugin included);
- ``exit_wall_speedup``: over HashEE with no exits, the same kernels: what
  the exits themselves buy. ``efficiency`` is it over the FLOPs speed-up.

Each is the median over the rounds of that round's ratio: the configurations
of a round ran back to back, so drift of the machine between rounds cancels.
"""

import os
import statistics
from typing import Dict, List

from ..errors import HashEEError
from .settings import ALL_EXITS, ENC_EXITS, NO_EXITS, RULE_CONFIGS, STOCK, Setting

TARGETS = {
    "no_exit_overhead": 1.03,
    "encoder_efficiency": 0.9,
    "generation_efficiency": 0.9,  # encoder+decoder hash exits
    "rule_generation_efficiency": 0.8,  # dynamic rules decide per layer, at a cost
    "end_to_end_speedup": 2.1,  # DistilBART-6-6's wall-clock gain over bart-large-cnn
    "operators": 1.1,  # per encoder forward or decoder step, against stock BART's (issue: launch-bound GPUs)
}
# The resident-set measure moves by a fraction of a MiB between identical runs.
MEMORY_TOLERANCE_MIB = 1.0


def _paired_speedup(baseline: List[float], runs: List[float]) -> float:
    return statistics.median(base / run for base, run in zip(baseline, runs))


def setting_rows(setting: Setting, counts: dict, memory: dict, walls: Dict[str, List[float]], args) -> List[dict]:
    """One row per configuration of a setting."""
    inputs = setting.inputs
    stock = walls.get(STOCK, walls[NO_EXITS])
    rows = []
    for c, runs in walls.items():
        wall = statistics.median(runs)
        report = counts[NO_EXITS] if c == STOCK else counts.get(c, counts[NO_EXITS])
        key = "enc_speedup" if setting.kind == "encoder" else "total_speedup"
        flops_speedup = 1.0 if c == STOCK else report[key]
        exit_wall_speedup = _paired_speedup(walls[NO_EXITS], runs)
        tokens = inputs.src_tokens.numel() if setting.kind == "encoder" else inputs.src_tokens.size(0) * args.tgt_len
        rows.append(
            {
                "kind": setting.kind,
                "decoding": setting.decoding,
                "src_len": inputs.src_tokens.size(1),
                "batch": inputs.src_tokens.size(0),
                "config": c,
                "wall_s": wall,
                "wall_runs_s": runs,
                "wall_speedup": _paired_speedup(stock, runs),
                "exit_wall_speedup": exit_wall_speedup,
                "flops_speedup": flops_speedup,
                "efficiency": exit_wall_speedup / flops_speedup,
                "tokens_per_s": tokens / wall,
                "peak_memory_mib": memory[c],
                # per encoder forward, or per decoder step (beam search's own included)
                "operators": counts.get(c, {}).get("operators"),
                "enc_mean_exit": report["enc_mean_exit"],
                "dec_mean_exit": report["dec_mean_exit"],
            }
        )
    return rows


def _where(row: dict) -> str:
    decoding = f", {row['decoding']}" if row.get("decoding") else ""
    return f"(src {row['src_len']}, batch {row['batch']}{decoding})"


def _check(name: str, row: dict, value: float, bound: float, at_most: bool = False, unit: str = "") -> dict:
    return {
        "target": f"{name} {_where(row)}",
        "value": value,
        "want": f"{'<=' if at_most else '>='} {bound}{unit}",
        "met": value <= bound if at_most else value >= bound,
    }


def check_targets(rows: List[dict]) -> List[dict]:
    def find(kind, config):
        return [r for r in rows if r["kind"] == kind and r["config"] == config]

    def stock_of(row):
        same = [
            r
            for r in rows
            if r["config"] == STOCK and all(r.get(k) == row.get(k) for k in ("kind", "decoding", "src_len", "batch"))
        ]
        return same[0] if same else None

    checks = []
    for kind in ("encoder", "generate"):
        for ours in find(kind, NO_EXITS):
            if stock_of(ours) is not None:
                # the row's paired estimate, not a ratio of medians
                checks.append(
                    _check(
                        f"no-exit overhead, {kind}",
                        ours,
                        1.0 / ours["wall_speedup"],
                        TARGETS["no_exit_overhead"],
                        at_most=True,
                    )
                )
        for ours in find(kind, ENC_EXITS) + find(kind, ALL_EXITS):
            stock = stock_of(ours)
            if stock is not None and ours.get("operators") and stock.get("operators"):
                # launches, the cost a GPU pays per operator whatever its size (docs/benchmark.md)
                ratio = ours["operators"] / stock["operators"]
                checks.append(
                    _check(
                        f"operators vs stock, {kind}, {ours['config']}", ours, ratio, TARGETS["operators"], at_most=True
                    )
                )
        for ours in find(kind, ALL_EXITS):
            stock = stock_of(ours)
            if stock is not None and ours["peak_memory_mib"] is not None and stock["peak_memory_mib"] is not None:
                extra = ours["peak_memory_mib"] - stock["peak_memory_mib"]
                checks.append(
                    _check(
                        f"peak memory, {kind}", ours, extra, MEMORY_TOLERANCE_MIB, at_most=True, unit=" MiB over stock"
                    )
                )
    for row in find("encoder", ENC_EXITS):
        checks.append(_check("encoder efficiency", row, row["efficiency"], TARGETS["encoder_efficiency"]))
    for row in find("generate", ALL_EXITS):
        checks.append(
            _check("generation efficiency, enc+dec exits", row, row["efficiency"], TARGETS["generation_efficiency"])
        )
    for rule in RULE_CONFIGS:
        for row in find("generate", rule):
            checks.append(
                _check(f"generation efficiency, {rule}", row, row["efficiency"], TARGETS["rule_generation_efficiency"])
            )
    for row in find("generate", ALL_EXITS):
        if stock_of(row) is not None:
            checks.append(
                _check(
                    "end-to-end speed-up over stock, enc+dec exits",
                    row,
                    row["wall_speedup"],
                    TARGETS["end_to_end_speedup"],
                )
            )
    return checks


HEADER = (
    f"{'kind':<9}{'src':>5}{'bsz':>4} {'dec.':<7}{'configuration':<25}"
    f"{'wall s':>8}{'vs stock':>9}{'vs no-exit':>11}{'FLOPs x':>8}{'eff.':>6}{'tok/s':>8}{'peak MiB':>9}{'ops':>7}"
)


def format_rows(rows: List[dict]) -> str:
    lines = []
    for r in rows:
        mem = f"{r['peak_memory_mib']:.0f}" if r["peak_memory_mib"] is not None else "n/a"
        ops = f"{r['operators']:.0f}" if r.get("operators") is not None else "n/a"
        lines.append(
            f"{r['kind']:<9}{r['src_len']:>5}{r['batch']:>4} {r.get('decoding') or '':<7}{r['config']:<25}"
            f"{r['wall_s']:>8.3f}{r['wall_speedup']:>9.2f}{r['exit_wall_speedup']:>11.2f}{r['flops_speedup']:>8.2f}"
            f"{r['efficiency']:>6.2f}{r['tokens_per_s']:>8.0f}{mem:>9}{ops:>7}"
        )
    return "\n".join(lines)


def format_checks(checks: List[dict]) -> str:
    return "\n".join(
        f"{'MET ' if c['met'] else 'MISS'}  {c['target']}: {c['value']:.3f} (want {c['want']})" for c in checks
    )


def plot(points: List[dict], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise HashEEError("--plot needs matplotlib (pip install 'fairseq-hashee[bench]')") from None
    fig, ax = plt.subplots(figsize=(5, 4))
    xs, ys = [p["flops_speedup"] for p in points], [p["exit_wall_speedup"] for p in points]
    top = max(xs + ys) * 1.1
    ax.plot([1, top], [1, top], "k--", lw=0.8, label="wall = FLOPs")
    ax.plot([1, top], [0.9, 0.9 * top], "k:", lw=0.8, label="wall = 0.9 x FLOPs")
    ax.scatter(xs, ys)
    for p, x, y in zip(points, xs, ys):
        ax.annotate(p["label"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("FLOPs speed-up")
    ax.set_ylabel("wall-clock speed-up over no exits")
    ax.set_title("HashEE encoder: wall-clock vs FLOPs")
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)
