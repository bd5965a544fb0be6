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

from ..errors import HashEEError
from . import difficulty, hash_functions
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
    # The difficulty table's (decoder only): its multi-exit checkpoint, target mean exit, statistic.
    difficulty_from: Optional[str] = None
    difficulty_mean_exit: Optional[float] = None
    difficulty_statistic: str = difficulty.DEFAULT_STATISTIC
    difficulty_margin: float = difficulty.DEFAULT_MARGIN

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

    def check(self, stack: str, num_layers: int) -> None:
        """Every option that can be checked before a split or checkpoint is read."""
        self.buckets(num_layers)
        if self.hash_type != "difficulty":
            return
        if stack != "decoder":
            raise HashEEError(
                f"{self.option_prefix}hash-type difficulty: difficulty tables are decoder tables (they measure how "
                "early the exit heads predict the next token)"
            )
        if self.difficulty_mean_exit is None:
            raise HashEEError(
                f"--difficulty-mean-exit: a difficulty table needs its target mean exit layer (1..{num_layers})"
            )
        if not 1 <= self.difficulty_mean_exit <= num_layers:
            raise HashEEError(
                f"--difficulty-mean-exit: {self.difficulty_mean_exit:g} is outside the decoder's layers 1..{num_layers}"
            )
        if self.difficulty_statistic not in difficulty.STATISTICS:
            raise HashEEError(
                f"--difficulty-statistic: expected one of {', '.join(difficulty.STATISTICS)}, "
                f"got {self.difficulty_statistic!r}"
            )
        if not self.difficulty_margin >= 0:
            raise HashEEError(f"--difficulty-margin: must be at least 0 nats, got {self.difficulty_margin}")


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
        described = {"buckets": ",".join(map(str, buckets)), "seed": str(self.options.seed), "split": self.stats_from}
        if self.options.hash_type == "difficulty":
            return self._build_difficulty(special, buckets, described)
        table = hash_functions.build_table(
            self.options.hash_type, self.stats, special, buckets, self.num_layers, self.options.seed, embeddings
        )
        if self.needs_embeddings:
            described["embeddings"] = embeddings_from
        return ExitTableFile(self.stack, self.options.hash_type, described, self.num_layers, list(self.symbols), table)

    def _build_difficulty(self, special: np.ndarray, buckets: List[int], described: dict) -> ExitTableFile:
        options, measured = self.options, self.stats.difficulty
        scores = difficulty.type_scores(measured, difficulty.DEFAULT_PRIOR)
        table, achieved = difficulty.difficulty_table(
            scores, measured.counts, special, buckets, self.num_layers, options.difficulty_mean_exit
        )
        del described["seed"]  # nothing is drawn
        described.update(
            checkpoint=str(options.difficulty_from).replace(" ", "%20"),
            statistic=options.difficulty_statistic,
            margin=f"{options.difficulty_margin:g}",
            prior=f"{difficulty.DEFAULT_PRIOR:g}",
            mean_exit=f"{options.difficulty_mean_exit:g}",
            achieved=f"{achieved:.3f}",
        )
        comments = difficulty.header_comments(
            options.difficulty_statistic, options.difficulty_margin, difficulty.DEFAULT_PRIOR
        )
        return ExitTableFile(
            self.stack, "difficulty", described, self.num_layers, list(self.symbols), table, tuple(comments)
        )

    def histogram(self, table: np.ndarray) -> str:
        return histogram(table, self.stats.counts)


def recipe_from_split(
    sides: SplitSides, stack: str, options: TableOptions, num_layers: int, task=None, device: str = "cpu"
) -> TableRecipe:
    """The recipe of ``stack``'s table from the token statistics of a binarized split (for a
    difficulty table, from its checkpoint reading the split on ``device``: the model built by
    ``task`` when given, the one training, else by the checkpoint's own task on ``sides``' data)."""
    options.check(stack, num_layers)  # a bad option fails before the split is read
    (lang, dictionary), (other_lang, other_dictionary) = sides.side(stack)
    if options.hash_type == "difficulty":
        return _difficulty_recipe(sides, options, num_layers, task, device)
    # The mi hash labels an occurrence by whether its token is also on the other
    # side of the pair (for a source token: it occurs in the reference summary).
    paired = sides.load(other_lang, other_dictionary) if options.hash_type == "mi" else None
    stats = token_stats(
        sides.load(lang, dictionary), len(dictionary), paired, name=f"{sides.data_path}/{sides.split} ({lang})"
    )
    return TableRecipe(stack, options, num_layers, dictionary.symbols, dictionary.nspecial, stats, sides.split)


def _difficulty_recipe(sides: SplitSides, options: TableOptions, num_layers: int, task, device: str) -> TableRecipe:
    from . import difficulty_source  # fairseq's checkpoint loading, only where a checkpoint is read

    difficulty_source.check_checkpoint(options.difficulty_from, num_layers, len(sides.tgt_dict))
    overrides = None
    if task is None:
        overrides = {"data": sides.data_path, "source_lang": sides.source_lang, "target_lang": sides.target_lang}
    model = difficulty_source.load_model(options.difficulty_from, task, overrides, device)
    measured = difficulty_source.measure(
        model,
        sides.load(sides.source_lang, sides.src_dict),
        sides.load(sides.target_lang, sides.tgt_dict),
        sides.src_dict,
        sides.tgt_dict,
        options.difficulty_statistic,
        options.difficulty_margin,
        device,
    )
    stats = TokenStats(measured.counts, difficulty=measured)
    symbols, nspecial = sides.tgt_dict.symbols, sides.tgt_dict.nspecial
    return TableRecipe("decoder", options, num_layers, symbols, nspecial, stats, sides.split)


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
