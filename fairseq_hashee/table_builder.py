"""From a binarized split to an exit table: what the task and ``hashee-table`` share."""

from collections import Counter
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from . import hash_functions
from .table_file import ExitTableFile
from .token_stats import TokenStats, load_side, token_stats


@dataclass
class SplitSides:
    """Where one binarized language pair split lives, and its dictionaries."""

    data_path: str
    split: str
    source_lang: str
    target_lang: str
    src_dict: object
    tgt_dict: object
    dataset_impl: Optional[str] = None

    def side(self, stack: str):
        """(dataset, dictionary) of the side a stack reads, then of the other side."""
        own, other = (
            ((self.source_lang, self.src_dict), (self.target_lang, self.tgt_dict))
            if stack == "encoder"
            else ((self.target_lang, self.tgt_dict), (self.source_lang, self.src_dict))
        )
        return own, other

    def load(self, lang: str, dictionary):
        return load_side(
            self.data_path, self.split, self.source_lang, self.target_lang, lang, dictionary, self.dataset_impl
        )


def build_stack_table(
    sides: SplitSides,
    stack: str,
    hash_type: str,
    buckets: Sequence[int],
    num_layers: int,
    seed: int,
    embeddings: Optional[np.ndarray] = None,
    embeddings_from: str = "",
) -> Tuple[ExitTableFile, TokenStats]:
    """Hash every symbol of ``stack``'s dictionary from the statistics of ``sides``
    (and, for ``cluster``, the token ``embeddings``, described by ``embeddings_from``)."""
    (lang, dictionary), (other_lang, other_dictionary) = sides.side(stack)
    # The mi hash labels an occurrence by whether its token is also on the other
    # side of the pair (for a source token: it occurs in the reference summary).
    paired = sides.load(other_lang, other_dictionary) if hash_type == "mi" else None
    stats = token_stats(
        sides.load(lang, dictionary), len(dictionary), paired, name=f"{sides.data_path}/{sides.split} ({lang})"
    )
    special = hash_functions.special_symbol_mask(dictionary.symbols, dictionary.nspecial)
    table = hash_functions.build_table(hash_type, stats, special, buckets, num_layers, seed, embeddings)
    options = {"buckets": ",".join(map(str, buckets)), "seed": str(seed), "split": sides.split}
    if hash_type == "cluster":
        options["embeddings"] = embeddings_from
    return ExitTableFile(stack, hash_type, options, num_layers, list(dictionary.symbols), table), stats


def histogram(table: np.ndarray, counts: np.ndarray) -> str:
    """Types and token mass per exit layer (or draw set), one phrase each."""
    types = Counter(table.tolist())
    mass = Counter()
    for entry, count in zip(table.tolist(), counts.tolist()):
        mass[entry] += count
    total = max(float(counts.sum()), 1.0)
    # Draw sets (negative) after the fixed layers, as the file shows them.
    order = sorted(types, key=lambda entry: (entry < 0, abs(entry)))
    return ", ".join(
        f"{hash_functions.format_exit(entry)}: {types[entry]} types / {100.0 * mass[entry] / total:.1f}% tokens"
        for entry in order
    )
