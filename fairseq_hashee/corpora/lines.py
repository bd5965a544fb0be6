"""Data already split and aligned: ``{train,valid,test}.{source,target}``, one example a line.

For any dataset that is already in this form, e.g. the untokenized CNN/DM files
fairseq's BART recipe starts from (there ``val`` is accepted for ``valid``).
Line i of a ``.source`` file is the document whose summary is line i of the
``.target`` file, so both files must have the same number of lines.
"""

import os
from typing import Dict, Iterator, List

from ..errors import HashEEError
from .records import Entry, Record, decode, read_bytes

NAME = "lines"
DESCRIPTION = "aligned line files {train,valid|val,test}.{source,target}"
HELD_OUT: Dict[str, float] = {}  # official splits
_NAMES = {"train": ("train",), "valid": ("valid", "val"), "test": ("test",)}


def read(raw_dir: str) -> Dict[str, Iterator[Entry]]:
    return {split: _pairs(*_files(raw_dir, split)) for split in _NAMES}


def _files(raw_dir: str, split: str):
    for name in _NAMES[split]:
        source, target = (os.path.join(raw_dir, f"{name}.{side}") for side in ("source", "target"))
        if os.path.isfile(source) or os.path.isfile(target):
            return source, target
    return (os.path.join(raw_dir, f"{_NAMES[split][0]}.{side}") for side in ("source", "target"))


def _lines(path: str) -> List[str]:
    """Lines as fairseq counts them: ends of line are "\n" only (a U+2028 inside a document is no break)."""
    if not os.path.isfile(path):
        raise HashEEError(f"{path}: no such file (expected {{train,valid,test}}.{{source,target}})")
    text = decode(read_bytes(path))
    lines = text.split("\n")
    return lines[:-1] if text.endswith("\n") or not text else lines


def _pairs(source_path: str, target_path: str) -> Iterator[Entry]:
    sources, targets = _lines(source_path), _lines(target_path)
    if len(sources) != len(targets):
        raise HashEEError(
            f"{source_path} has {len(sources)} lines but {target_path} has {len(targets)}; "
            "line i of one must be the summary of line i of the other"
        )
    for number, (source, target) in enumerate(zip(sources, targets), 1):
        yield Record(source, target, f"{source_path}:{number}")
