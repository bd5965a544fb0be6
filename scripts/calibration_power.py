#!/usr/bin/env python
"""How often each p-value certifies a budget on the mean ROUGE drop: WSR against Hoeffding-Bentkus.

The figures behind ``--p-value``'s default (docs/calibration.md): per-document
signed drops in [-1, 1] with the demo's spread (sd 0.13) and a true mean of
0.004 (HashEE's encoder exits against full depth), a budget of delta 0.02,
epsilon 0.1; for each calibration size, the share of ``--draws`` calibration
sets on which each p-value is at most epsilon. Two shapes with that mean and
sd: a normal (clipped at +-1, which moves neither at 7 sd) and the demo's
kind, a tenth of the documents identical to full depth's (drop 0) and the rest
spread wider. Prints the table and writes it as JSON.

    python scripts/calibration_power.py [--draws 2000] [--json power.json]
"""

import argparse
import json
import math

import numpy as np

from fairseq_hashee.calibration import ltt
from fairseq_hashee.io_utils import atomic_write


def drops(shape: str, mean: float, sd: float, size, rng) -> np.ndarray:
    """Signed drops in [-1, 1] with this mean and sd (the clipping at +-1 is 7 sd away: negligible)."""
    if shape == "normal":
        return np.clip(mean + sd * rng.standard_normal(size), -1.0, 1.0)
    # a tenth exactly 0, the rest with the mean and variance that give the whole its mean and sd
    zero = 0.1
    rest_mean = mean / (1 - zero)
    rest_sd = math.sqrt((sd**2 + mean**2) / (1 - zero) - rest_mean**2)
    rest = np.clip(rest_mean + rest_sd * rng.standard_normal(size), -1.0, 1.0)
    return np.where(rng.random(size) < zero, 0.0, rest)


def certified_share(kind: str, losses: np.ndarray, delta: float, epsilon: float) -> float:
    scaled = (losses + 1.0) / 2.0  # [-1, 1] -> [0, 1], as calibration maps the drop
    return float(np.mean(np.asarray(ltt.p_values(kind, scaled, (delta + 1.0) / 2.0, epsilon)) <= epsilon))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=2000, help="calibration sets per size")
    parser.add_argument("--sizes", default="100,500,1000", help="calibration sizes n")
    parser.add_argument("--mean", type=float, default=0.004, help="true mean drop")
    parser.add_argument("--sd", type=float, default=0.13, help="sd of the per-document drop")
    parser.add_argument("--delta", type=float, default=0.02)
    parser.add_argument("--epsilon", type=float, default=0.1)
    parser.add_argument("--p-values", default="wsr,hb", help="which p-values (hb is slow at large n)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the table here")
    args = parser.parse_args(argv)

    kinds = [kind for kind in args.p_values.split(",") if kind in ltt.P_VALUES]
    rng = np.random.default_rng(args.seed)
    rows = []
    for shape in ("normal", "tenth identical"):
        for n in (int(size) for size in args.sizes.split(",")):
            losses = drops(shape, args.mean, args.sd, (args.draws, n), rng)
            shares = {kind: certified_share(kind, losses, args.delta, args.epsilon) for kind in kinds}
            rows.append({"shape": shape, "n": n, **{f"certified_{kind}": share for kind, share in shares.items()}})
    print(
        f"share of {args.draws} calibration sets certified: drop mean {args.mean:g}, sd {args.sd:g}, "
        f"delta {args.delta:g}, epsilon {args.epsilon:g}"
    )
    print(f"{'shape':<16} {'n':>5} " + " ".join(f"{kind.upper():>7}" for kind in kinds))
    for row in rows:
        print(f"{row['shape']:<16} {row['n']:>5} " + " ".join(f"{row['certified_' + kind]:7.3f}" for kind in kinds))
    if args.json:
        with atomic_write(args.json) as out:
            json.dump({"settings": vars(args), "rows": rows}, out, indent=1)


if __name__ == "__main__":
    main()
