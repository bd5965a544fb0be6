"""How an exit table is made, in one recipe the task, ``hashee-table`` and the benchmark share.

``TableOptions`` are one stack's options however they were given (the task's
``--encoder-*``/``--decoder-*`` options, ``hashee-table``'s, the benchmark's);
a ``TableRecipe`` adds what the hash reads (the dictionary and token
statistics of a split) and builds the table. Building is a pure call: the
same recipe gives the same table on every rank, and a stack keeps its recipe
so a hash of the model's own weights (cluster) can be rebuilt from restored
embeddings (docs/design.md section 2).
"""

from collections import Counter
from dataclasses import dataclass
from typing import List, Optional, Sequence

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


@dataclass(frozen=True)
class TableOptions:
    """One stack's table options; ``option_prefix`` names them in errors
    (``--encoder-`` for the task's ``--encoder-exit-layers``, ``--`` for hashee-table's)."""

    hash_type: str = "frequency"
    exit_layers: Optional[str] = None  # comma-separated buckets; overrides min/max/step
    exit_min: int = 1
    exit_max: Optional[int] = None  # default: the last layer
    exit_step: int = 1
    seed: int = 1
    option_prefix: str = "--"

    def buckets(self, num_layers: int) -> List[int]:
        """The exit layers the hash may assign, checked against the stack's layers."""
        listed_option = f"{self.option_prefix}exit-layers"
        listed = hash_functions.parse_layer_list(self.exit_layers, listed_option)
        return hash_functions.exit_buckets(
            num_layers,
            layers=listed,
            min_layer=self.exit_min,
            max_layer=self.exit_max,
            step=self.exit_step,
            option=listed_option if listed else f"{self.option_prefix}exit-min/max/step",
        )


@dataclass
class TableRecipe:
    """Everything one stack's table is built from."""

    stack: str
    options: TableOptions
    num_layers: int
    symbols: Sequence[str]
    nspecial: int
    stats: TokenStats
    stats_from: str  # the split (or dict file) the statistics were counted on

    @property
    def needs_embeddings(self) -> bool:
        return self.options.hash_type == "cluster"

    def build(self, embeddings: Optional[np.ndarray] = None, embeddings_from: str = "") -> ExitTableFile:
        """The table, as a file can hold it; ``embeddings`` (V, d) for the cluster hash,
        described by ``embeddings_from``."""
        buckets = self.options.buckets(self.num_layers)
        special = hash_functions.special_symbol_mask(self.symbols, self.nspecial)
        table = hash_functions.build_table(
            self.options.hash_type, self.stats, special, buckets, self.num_layers, self.options.seed, embeddings
        )
        described = {"buckets": ",".join(map(str, buckets)), "seed": str(self.options.seed), "split": self.stats_from}
        if self.needs_embeddings:
            described["embeddings"] = embeddings_from
        return ExitTableFile(self.stack, self.options.hash_type, described, self.num_layers, list(self.symbols), table)

    def histogram(self, table: np.ndarray) -> str:
        return histogram(table, self.stats.counts)


def recipe_from_split(sides: SplitSides, stack: str, options: TableOptions, num_layers: int) -> TableRecipe:
    """The recipe of ``stack``'s table from the token statistics of a binarized split."""
    options.buckets(num_layers)  # a bad option fails before the split is read
    (lang, dictionary), (other_lang, other_dictionary) = sides.side(stack)
    # The mi hash labels an occurrence by whether its token is also on the other
    # side of the pair (for a source token: it occurs in the reference summary).
    paired = sides.load(other_lang, other_dictionary) if options.hash_type == "mi" else None
    stats = token_stats(
        sides.load(lang, dictionary), len(dictionary), paired, name=f"{sides.data_path}/{sides.split} ({lang})"
    )
    return TableRecipe(stack, options, num_layers, dictionary.symbols, dictionary.nspecial, stats, sides.split)


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
