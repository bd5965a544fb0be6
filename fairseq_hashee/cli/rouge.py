"""``hashee-rouge``: ROUGE-1/2/L F1 (x100) of a hypothesis file against a reference file.

The scoring itself (tokenizers, Chinese units, plain means) is ``fairseq_hashee/rouge.py``,
which ``hashee-compare`` and the calibration losses share.
"""

import argparse
import json
import sys
from typing import List

from ..io_utils import atomic_write
from ..rouge import rouge


def _read_lines(path: str) -> List[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            return [line.rstrip("\n") for line in handle]
    except FileNotFoundError:
        raise SystemExit(f"error: {path}: no such file") from None
    except UnicodeDecodeError as err:
        raise SystemExit(f"error: {path}: not UTF-8 ({err.reason} at byte {err.start})") from None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("``", ""))
    parser.add_argument("--hyp", required=True, help="hypotheses, one per line")
    parser.add_argument("--ref", required=True, help="references, one per line")
    parser.add_argument("--lang", choices=["en", "zh"], default="en")
    parser.add_argument("--zh-unit", choices=["char", "jieba"], default="char", help="Chinese token unit")
    parser.add_argument("--json", help="also write the scores to this JSON file")
    args = parser.parse_args(argv)

    hyps, refs = _read_lines(args.hyp), _read_lines(args.ref)
    if len(hyps) != len(refs):
        sys.exit(f"error: {args.hyp} has {len(hyps)} lines but {args.ref} has {len(refs)}")
    if not hyps:
        sys.exit(f"error: {args.hyp}: empty, nothing to score")
    try:
        scores = rouge(hyps, refs, args.lang, args.zh_unit)
    except ValueError as err:
        sys.exit(f"error: {args.ref}: {err}")
    print(" ".join(f"{name.upper().replace('ROUGE', 'ROUGE-')}: {value:.2f}" for name, value in scores.items()))
    if args.json:
        with atomic_write(args.json) as out:
            json.dump(scores, out, indent=2)


if __name__ == "__main__":
    main()
