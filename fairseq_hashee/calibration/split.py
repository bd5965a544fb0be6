"""The calibration split: which one, how many examples it has, and a copy of its first examples only.

fairseq-generate has no option to stop after N examples, so ``--max-examples``
writes the first N of the split (both sides, binarized as fairseq-preprocess
writes them) with the data's dictionaries into a folder of its own.
"""

import shutil
from pathlib import Path
from typing import Optional, Tuple

from ..errors import HashEEError

CALIB = "calib"  # the split calibration takes by default when the data has it


def _prefix(data: Path, subset: str, pair: Tuple[str, str], lang: str) -> Path:
    return data / f"{subset}.{pair[0]}-{pair[1]}.{lang}"


def _open(prefix: Path):
    """The binarized examples at ``prefix``, opened the way fairseq-preprocess wrote them (without
    data_utils.load_indexed_dataset, which logs a line per call on the user's console)."""
    from fairseq.data import indexed_dataset

    return indexed_dataset.make_dataset(str(prefix), indexed_dataset.infer_dataset_impl(str(prefix)))


def count_examples(data: Path, subset: str, pair: Tuple[str, str], option: str = "--subset") -> int:
    """Examples of the binarized ``subset``; one error naming ``option`` when a side is missing."""
    for lang in pair:
        index = Path(f"{_prefix(data, subset, pair, lang)}.idx")
        if not index.exists():
            raise HashEEError(f"{option}: {index} missing; binarize the {subset} split with fairseq-preprocess")
    source = _prefix(data, subset, pair, pair[0])
    if Path(f"{source}.bin").stat().st_size == 0:  # every example holds at least </s>; fairseq cannot map it
        return 0
    return len(_open(source))


def calibration_subset(data: Path, pair: Tuple[str, str], requested: Optional[str], option: str) -> Tuple[str, int]:
    """The calibration split and its size: ``requested``, else ``calib`` when the data has one (a split
    held out for it: hashee-sample-data writes 1,000 pairs), else ``valid``; one error naming ``option``
    when it is missing or empty."""
    has_calib = all(Path(f"{_prefix(data, CALIB, pair, lang)}.idx").exists() for lang in pair)
    subset = requested or (CALIB if has_calib else "valid")
    examples = count_examples(data, subset, pair, option)
    if examples == 0:
        raise HashEEError(f"{option}: {subset} of {data} has no examples to calibrate on")
    return subset, examples


def first_examples(data: Path, subset: str, pair: Tuple[str, str], count: int, out: Path) -> None:
    """``out`` as a data folder whose ``subset`` is the first ``count`` examples of ``data``'s."""
    from fairseq.data import Dictionary, indexed_dataset

    out.mkdir(parents=True, exist_ok=True)
    for lang in pair:
        shutil.copyfile(data / f"dict.{lang}.txt", out / f"dict.{lang}.txt")
        source = _open(_prefix(data, subset, pair, lang))
        target = _prefix(out, subset, pair, lang)
        vocabulary = len(Dictionary.load(str(data / f"dict.{lang}.txt")))
        builder = indexed_dataset.make_builder(f"{target}.bin", "mmap", vocab_size=vocabulary)
        for index in range(count):
            builder.add_item(source[index])
        builder.finalize(f"{target}.idx")
