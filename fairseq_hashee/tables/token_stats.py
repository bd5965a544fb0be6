"""Token statistics of a binarized fairseq split, the input of the data-driven hashes."""

import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
from fairseq.data import data_utils

from ..errors import HashEEError

_CHUNK_TOKENS = 1 << 22


def load_side(data_path: str, split: str, src: str, tgt: str, lang: str, dictionary, dataset_impl=None):
    """The indexed dataset of one side (``lang``) of a binarized language pair."""
    tried = []
    for pair in (f"{src}-{tgt}", f"{tgt}-{src}"):
        prefix = os.path.join(data_path, f"{split}.{pair}.{lang}")
        tried.append(prefix)
        dataset = data_utils.load_indexed_dataset(prefix, dictionary, dataset_impl)
        if dataset is not None:
            return dataset
    raise HashEEError(
        f"hash tables need token statistics of split {split!r}: no binarized data at "
        f"{' or '.join(p + '.bin' for p in tried)} (see --hash-stats-subset)"
    )


@dataclass
class TokenStats:
    """Per-id occurrence counts of one side of a split.

    ``labeled`` counts the occurrences whose id also occurs in the paired
    sentence of the other side (for a source token: it occurs in the reference
    summary), the label of the mutual-information hash; None when not gathered.
    ``difficulty`` holds a difficulty table's measurements (its ``counts`` are
    then the decoder's input occurrences, which that table is indexed by).
    """

    counts: np.ndarray
    labeled: Optional[np.ndarray] = None
    difficulty: Optional[object] = None  # tables/difficulty.py's DifficultyStats


def token_stats(dataset, vocab_size: int, paired=None, name: str = "dataset") -> TokenStats:
    """Statistics of every id over all sentences of an indexed dataset.

    With ``paired`` (the other side, sentence-aligned) the labeled counts are gathered too.
    """
    counts = np.zeros(vocab_size, dtype=np.int64)
    labeled = np.zeros(vocab_size, dtype=np.int64) if paired is not None else None

    def add(target, chunk):
        found = np.bincount(np.concatenate(chunk), minlength=vocab_size)
        if found.size > vocab_size:
            raise HashEEError(
                f"{name}: holds id {found.size - 1} but the dictionary has only "
                f"{vocab_size} symbols; was it binarized with another dict.txt?"
            )
        target += found

    pending, pending_labeled, pending_len = [], [], 0
    for i in range(len(dataset)):
        ids = np.asarray(dataset[i], dtype=np.int64)
        pending.append(ids)
        if paired is not None:
            pending_labeled.append(ids[np.isin(ids, np.asarray(paired[i]))])
        pending_len += ids.size
        if pending_len >= _CHUNK_TOKENS or i == len(dataset) - 1:
            add(counts, pending)
            if paired is not None:
                add(labeled, pending_labeled)
            pending, pending_labeled, pending_len = [], [], 0
    return TokenStats(counts, labeled)
