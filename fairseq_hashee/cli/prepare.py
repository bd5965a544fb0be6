"""Turn a public summarization release into clean, aligned source/target line files.

    hashee-prepare DATASET RAW_DIR OUT_DIR

DATASET is one of the readers in fairseq_hashee/corpora (cnndm, reddit, csl,
ttnews, lines). OUT_DIR gets {train,valid,test}.{source,target} (one example a
line: whitespace runs and newlines become one space, control and format
characters go) and prepare.json with the counts. An entry that cannot become an
example (no summary, empty after cleaning, bytes that are not UTF-8) is skipped
and counted, with the first place each reason occurred. OUT_DIR is written as a
temporary folder renamed at the end, so a failure leaves no partial output.
Releases without an official split are divided by a seeded shuffle.
"""

import argparse
import json
import os
import sys
from typing import Dict, Optional

from ..corpora import READERS
from ..corpora.records import POOL, SPLITS, Tally, clean, hold_out
from ..errors import HashEEError
from ..io_utils import atomic_directory

SIDES = ("source", "target")


def held_out_fractions(reader, valid: Optional[float], test: Optional[float]) -> Dict[str, float]:
    """The reader's fractions for the splits its release lacks, with the options' overrides."""
    given = {name: value for name, value in (("valid", valid), ("test", test)) if value is not None}
    if given and not reader.HELD_OUT:
        raise HashEEError(f"--{next(iter(given))}-fraction: {reader.NAME} comes with its own splits")
    for name, value in given.items():
        if not 0 < value < 1:
            raise HashEEError(f"--{name}-fraction: expected a fraction between 0 and 1, got {value}")
    return {**reader.HELD_OUT, **given}


def prepare(
    dataset: str,
    raw_dir: str,
    out_dir: str,
    force: bool = False,
    seed: int = 1,
    valid_fraction: Optional[float] = None,
    test_fraction: Optional[float] = None,
) -> dict:
    """Read, clean and write one release; returns the report also saved as prepare.json."""
    reader = READERS[dataset]
    fractions = held_out_fractions(reader, valid_fraction, test_fraction)
    if not os.path.isdir(raw_dir):
        raise HashEEError(f"{raw_dir}: no such directory")
    tally = Tally()
    counts = {}
    with atomic_directory(out_dir, force) as tmp:
        entries = reader.read(raw_dir)
        for split in SPLITS:
            if split in entries:
                counts[split] = _write(tmp, split, clean(entries[split], tally))
        if POOL in entries:
            wanted = {split: fraction for split, fraction in fractions.items() if split not in counts}
            for split, records in hold_out(list(clean(entries[POOL], tally)), wanted, seed).items():
                counts[split] = _write(tmp, split, records)
        for split in SPLITS:
            if not counts.get(split):
                raise HashEEError(f"{raw_dir}: no usable {split} examples ({tally.summary()})")
        report = {
            "dataset": dataset,
            "raw_dir": os.path.abspath(raw_dir),
            "examples": {split: counts[split] for split in SPLITS},
            "skipped": tally.as_dict(),
            "seed": seed if POOL in entries else None,
        }
        with open(os.path.join(tmp, "prepare.json"), "w", encoding="utf-8") as out:
            json.dump(report, out, indent=2)
    print(f"{dataset}: " + ", ".join(f"{split} {counts[split]}" for split in SPLITS) + " examples")
    print(tally.summary())
    return report


def _write(folder: str, split: str, records) -> int:
    count = 0
    with open(os.path.join(folder, f"{split}.source"), "w", encoding="utf-8") as source, open(
        os.path.join(folder, f"{split}.target"), "w", encoding="utf-8"
    ) as target:
        for record in records:
            source.write(record.source + "\n")
            target.write(record.target + "\n")
            count += 1
    return count


def main(argv=None):
    readers = "\n".join(f"  {name:<8} {reader.DESCRIPTION}" for name, reader in READERS.items())
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=f"datasets:\n{readers}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dataset", choices=sorted(READERS))
    parser.add_argument("raw_dir", help="the release as downloaded and unpacked")
    parser.add_argument("out_dir", help="where {train,valid,test}.{source,target} go")
    parser.add_argument("--force", action="store_true", help="replace an existing OUT_DIR")
    parser.add_argument("--seed", type=int, default=1, help="seed of the split of releases that have none")
    parser.add_argument(
        "--valid-fraction",
        type=float,
        help="share of examples held out for validation (releases without a split; reddit 0.1, ttnews 0.04)",
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        help="share held out for test (reddit 0.1; ttnews 0.04 when there is no evaluation_with_ground_truth.txt)",
    )
    args = parser.parse_args(argv)
    try:
        prepare(
            args.dataset, args.raw_dir, args.out_dir, args.force, args.seed, args.valid_fraction, args.test_fraction
        )
    except HashEEError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
