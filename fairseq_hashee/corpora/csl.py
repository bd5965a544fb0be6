"""CSL title generation (abstract -> title) as CPT fine-tunes on it.

Layout of CPT's generation data: ``SUMMARY.csl/train.json``, ``dev.json`` and
``test.json``, each one JSON array of objects with ``article`` (the paper's
abstract) and ``summarization`` (its title). dev.json is the validation split.
"""

from typing import Dict, Iterator

from .records import Entry, Record, find_file, json_array, text_field

NAME = "csl"
DESCRIPTION = "CSL abstract -> title, CPT's SUMMARY.csl/{train,dev,test}.json (article -> summarization)"
HELD_OUT: Dict[str, float] = {}  # official splits
FILES = {"train": "train.json", "valid": "dev.json", "test": "test.json"}


def read(raw_dir: str) -> Dict[str, Iterator[Entry]]:
    paths = {
        split: find_file(raw_dir, name, "CPT's CSL summarization data, SUMMARY.csl/") for split, name in FILES.items()
    }
    return {split: _items(path) for split, path in paths.items()}


def _items(path: str) -> Iterator[Entry]:
    for where, item in json_array(path):
        yield Record(text_field(item, "article", where), text_field(item, "summarization", where), where)
