"""What every reader produces, and the cleaning, bookkeeping and splitting they share.

A reader turns one public release into ``Record(source, target, where)`` items,
or ``Skip(reason, where)`` for an entry that cannot become an example (a Reddit
post without a TL;DR, a story without highlights); ``where`` names the file and
line (or item) so that messages can point at it. Raw bytes are decoded with
``surrogateescape``: a byte that is not UTF-8 survives as a lone surrogate, so
one bad byte costs one example instead of the whole file, and ``clean`` skips
that example, counted. Replacing the byte with U+FFFD instead would let mangled
text into training data and references without anyone noticing.
"""

import glob
import json
import os
import random
import re
import sys
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, Iterable, Iterator, List, Optional, Tuple, Union

from ..errors import HashEEError

SPLITS = ("train", "valid", "test")
# A reader's key for examples of a release without an official split; hashee-prepare divides them.
POOL = "pool"
NOT_UTF8 = "not valid UTF-8"


@dataclass(frozen=True)
class Record:
    source: str
    target: str
    where: str


@dataclass(frozen=True)
class Skip:
    reason: str
    where: str


Entry = Union[Record, Skip]


class Tally:
    """How many entries were skipped for each reason, and where each reason first occurred."""

    def __init__(self):
        self.counts: Counter = Counter()
        self.first: Dict[str, str] = {}

    def skip(self, reason: str, where: str) -> None:
        self.counts[reason] += 1
        self.first.setdefault(reason, where)

    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.counts:
            return "nothing skipped"
        parts = [f"{reason} {count} (first: {self.first[reason]})" for reason, count in self.counts.most_common()]
        return f"skipped {self.total()}: " + ", ".join(parts)

    def as_dict(self) -> Dict[str, dict]:
        return {reason: {"count": count, "first": self.first[reason]} for reason, count in self.counts.items()}


def decode(data: bytes) -> str:
    """UTF-8, keeping undecodable bytes as lone surrogates for ``clean`` to find."""
    return data.decode("utf-8", errors="surrogateescape")


_SURROGATE = re.compile("[\ud800-\udfff]")


@lru_cache(maxsize=None)
def _invisible() -> "re.Pattern":
    """Control and format characters (Unicode Cc, Cf) other than whitespace: no visible text.

    Built from the running Python's Unicode database (about 0.3 s, once).
    """
    chars = "".join(
        chr(code)
        for code in range(sys.maxunicode + 1)
        if unicodedata.category(chr(code)) in ("Cc", "Cf") and not chr(code).isspace()
    )
    return re.compile("[" + re.escape(chars) + "]")


def clean_text(text: str) -> str:
    """One line: invisible characters dropped, every whitespace run (newlines too) one space."""
    return " ".join(_invisible().sub("", text).split())


def clean(entries: Iterable[Entry], tally: Tally) -> Iterator[Record]:
    """Cleaned records; skips (the reader's, undecodable text, empty sides) go to ``tally``."""
    for entry in entries:
        if isinstance(entry, Skip):
            tally.skip(entry.reason, entry.where)
        elif _SURROGATE.search(entry.source) or _SURROGATE.search(entry.target):
            tally.skip(NOT_UTF8, entry.where)
        else:
            source, target = clean_text(entry.source), clean_text(entry.target)
            if not source:
                tally.skip("empty document", entry.where)
            elif not target:
                tally.skip("empty summary", entry.where)
            else:
                yield Record(source, target, entry.where)


def find_file(raw_dir: str, name: str, what: str, required: bool = True) -> Optional[str]:
    """``raw_dir/name``, or the one file of that name below it (releases unpack into subfolders)."""
    direct = os.path.join(raw_dir, name)
    if os.path.isfile(direct):
        return direct
    found = sorted(
        p for p in glob.glob(os.path.join(glob.escape(raw_dir), "**", name), recursive=True) if os.path.isfile(p)
    )
    if len(found) > 1:
        raise HashEEError(
            f"{raw_dir}: {len(found)} files named {name} ({found[0]}, {found[1]}, ...); "
            "point RAW_DIR at a single release"
        )
    if not found and required:
        raise HashEEError(f"{raw_dir}: no {name} ({what})")
    return found[0] if found else None


def read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as err:
        raise HashEEError(f"{path}: cannot read ({err.strerror or err})") from None


def json_lines(path: str) -> Iterator[Tuple[str, Optional[dict]]]:
    """``(where, object)`` for every line of a JSON-lines file; a blank line gives ``(where, None)``."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            where = f"{path}:{number}"
            text = decode(raw).strip()
            yield where, (_json_object(text, where) if text else None)


def json_array(path: str) -> Iterator[Tuple[str, dict]]:
    """``(where, object)`` for every item of a file holding one JSON array of objects."""
    try:
        items = json.loads(decode(read_bytes(path)))
    except json.JSONDecodeError as err:
        raise HashEEError(f"{path}:{err.lineno}: not JSON ({err.msg}, column {err.colno})") from None
    if not isinstance(items, list):
        raise HashEEError(f"{path}: expected a JSON array of objects, found a JSON {type(items).__name__}")
    for index, item in enumerate(items):
        where = f"{path} item {index}"
        if not isinstance(item, dict):
            raise HashEEError(f"{where}: expected a JSON object, found {type(item).__name__}")
        yield where, item


def _json_object(text: str, where: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise HashEEError(f"{where}: not JSON ({err.msg}, column {err.colno})") from None
    if not isinstance(value, dict):
        raise HashEEError(f"{where}: expected a JSON object, found {type(value).__name__}")
    return value


def text_field(item: dict, key: str, where: str) -> str:
    """The text under ``key``; a missing or null field is empty text (``clean`` counts it)."""
    value = item.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise HashEEError(f"{where}: field {key!r} holds {type(value).__name__}, expected text")
    return value


def hold_out(pool: List[Record], fractions: Dict[str, float], seed: int) -> Dict[str, List[Record]]:
    """Split a release that comes without one: a seeded shuffle, each held-out split takes
    round(fraction x examples) (at least one), train keeps the rest; each split keeps the
    release's order, so the files read like the release."""
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    chosen: Dict[str, List[int]] = {}
    start = 0
    for split, fraction in fractions.items():
        size = max(1, round(fraction * len(pool)))
        chosen[split] = order[start : start + size]
        start += size
    chosen["train"] = order[start:]
    if not chosen["train"]:
        sizes = ", ".join(f"{split} {len(ids)}" for split, ids in chosen.items())
        raise HashEEError(f"only {len(pool)} usable examples: nothing left for train after {sizes}")
    return {split: [pool[i] for i in sorted(ids)] for split, ids in chosen.items()}
