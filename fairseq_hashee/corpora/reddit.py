"""Reddit TIFU-long (Kim et al. 2019) from ``tifu_all_tokenized_and_filtered.json``.

The release is one JSON object a line, lowercased and tokenized, with no split.
TIFU-long is the posts that have a TL;DR: document ``selftext_without_tldr``,
summary ``tldr``; a post whose ``tldr`` is null or empty belongs to TIFU-short
and is skipped, counted. hashee-prepare holds out 10% for validation and 10% for
test by a seeded shuffle (``--seed``, ``--valid-fraction``, ``--test-fraction``).
"""

from typing import Dict, Iterator

from .records import POOL, Entry, Record, Skip, find_file, json_lines, text_field

NAME = "reddit"
DESCRIPTION = "Reddit TIFU-long: tifu_all_tokenized_and_filtered.json (selftext_without_tldr -> tldr)"
HELD_OUT = {"valid": 0.1, "test": 0.1}
FILE = "tifu_all_tokenized_and_filtered.json"


def read(raw_dir: str) -> Dict[str, Iterator[Entry]]:
    return {POOL: _posts(find_file(raw_dir, FILE, "the Reddit TIFU release"))}


def _posts(path: str) -> Iterator[Entry]:
    for where, post in json_lines(path):
        if post is None:
            yield Skip("empty line", where)
        elif not text_field(post, "tldr", where).strip():
            yield Skip("no tldr", where)
        else:
            yield Record(text_field(post, "selftext_without_tldr", where), post["tldr"], where)
