"""CNN/DailyMail from the original story release (Hermann et al. 2015, as split by See et al. 2017).

Layout: ``cnn/stories/*.story`` and ``dailymail/stories/*.story``, plus the URL
lists ``all_train.txt``, ``all_val.txt``, ``all_test.txt`` (one URL a line) that
define the splits; a story file is named by the SHA1 hex digest of its URL. In a
story, paragraphs are separated by blank lines and each summary sentence is the
paragraph after an ``@highlight`` line. The document is the paragraphs joined by
spaces (cased, untokenized, as fairseq's BART recipe expects); the summary is
the highlights, each ending with a full stop if it had no closing punctuation,
so ROUGE-Lsum can split it into sentences again.
"""

import glob
import hashlib
import os
from typing import Dict, Iterator

from ..errors import HashEEError
from .records import Entry, Record, Skip, decode, find_file, read_bytes

NAME = "cnndm"
DESCRIPTION = "CNN/DailyMail stories (cnn/stories, dailymail/stories) split by all_{train,val,test}.txt"
HELD_OUT: Dict[str, float] = {}  # official splits
URL_LISTS = {"train": "all_train.txt", "valid": "all_val.txt", "test": "all_test.txt"}
HIGHLIGHT = "@highlight"
# A highlight ending in one of these already closes its sentence.
_CLOSERS = (".", "!", "?", "'", '"', ")", "\u2019", "\u201d")


def read(raw_dir: str) -> Dict[str, Iterator[Entry]]:
    url_lists = {
        split: find_file(raw_dir, name, "the CNN/DM URL list of that split") for split, name in URL_LISTS.items()
    }
    stories = _story_index(raw_dir)
    for path in url_lists.values():
        _check_all_present(path, stories)
    return {split: _split(path, stories) for split, path in url_lists.items()}


def _story_index(raw_dir: str) -> Dict[str, str]:
    """SHA1 hex -> story path, over every *.story below raw_dir."""
    paths = glob.glob(os.path.join(glob.escape(raw_dir), "**", "*.story"), recursive=True)
    if not paths:
        raise HashEEError(
            f"{raw_dir}: no *.story files (expected cnn/stories/ and dailymail/stories/ of the CNN/DM release)"
        )
    return {os.path.basename(path)[: -len(".story")]: path for path in paths}


def _urls(path: str) -> Iterator[tuple]:
    for number, line in enumerate(decode(read_bytes(path)).splitlines(), 1):
        url = line.strip()
        if url:
            yield number, url, hashlib.sha1(url.encode("utf-8", errors="surrogateescape")).hexdigest()


def _check_all_present(path: str, stories: Dict[str, str]) -> None:
    """A story missing from the download would silently shrink a split: refuse, naming the first."""
    missing = [(number, url, digest) for number, url, digest in _urls(path) if digest not in stories]
    if missing:
        number, url, digest = missing[0]
        total = sum(1 for _ in _urls(path))
        raise HashEEError(
            f"{path}:{number}: no story {digest}.story for {url} ({len(missing)} of {total} URLs "
            "have none; the release has cnn/stories and dailymail/stories)"
        )


def _split(path: str, stories: Dict[str, str]) -> Iterator[Entry]:
    for _, _, digest in _urls(path):
        yield parse_story(decode(read_bytes(stories[digest])), stories[digest])


def parse_story(text: str, where: str) -> Entry:
    """A story's (document, summary) record, or a skip when it has no highlights."""
    paragraphs, highlights = [], []
    is_highlight = False
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line == HIGHLIGHT:
            is_highlight = True
        elif is_highlight:
            highlights.append(line if line.endswith(_CLOSERS) else line + ".")
            is_highlight = False
        else:
            paragraphs.append(line)
    if not highlights:
        return Skip("no highlights", where)
    return Record(" ".join(paragraphs), " ".join(highlights), where)
