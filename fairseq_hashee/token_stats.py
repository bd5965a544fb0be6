"""Token statistics of a binarized fairseq split, the input of the data-driven hashes."""

import os

import numpy as np
from fairseq.data import data_utils
from .errors import HashEEError

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


def count_tokens(dataset, vocab_size: int, name: str = "dataset") -> np.ndarray:
    """Occurrences of every id over all sentences of an indexed dataset."""
    counts = np.zeros(vocab_size, dtype=np.int64)

    def add(chunk):
        found = np.bincount(np.concatenate(chunk), minlength=vocab_size)
        if found.size > vocab_size:
            raise HashEEError(
                f"{name}: holds id {found.size - 1} but the dictionary has only "
                f"{vocab_size} symbols; was it binarized with another dict.txt?"
            )
        counts[:] += found

    pending, pending_len = [], 0
    for i in range(len(dataset)):
        ids = np.asarray(dataset[i], dtype=np.int64)
        pending.append(ids)
        pending_len += ids.size
        if pending_len >= _CHUNK_TOKENS:
            add(pending)
            pending, pending_len = [], 0
    if pending:
        add(pending)
    return counts
