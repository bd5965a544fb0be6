"""Token -> exit-layer hash functions (HashEE, DESIGN.md section 2).

A table maps every vocabulary id to the layer (1..L) after which that token is
no longer updated. Every function here is a pure function of its inputs (token
statistics, seed, buckets), so every distributed rank that runs it on the same
data builds the same table without communicating.
"""

import re
from typing import Iterable, List, Optional, Sequence

import numpy as np

from .errors import HashEEError
from .token_stats import TokenStats

HASH_TYPES = ("random", "frequency", "mi")

# Symbols that carry structure rather than content never exit early: fairseq's
# <s>/<pad>/</s>/<unk>, BART's <mask>, BERT's [CLS]/[SEP]/[MASK], language tags
# such as __en__ or [en_XX], and the madeupwordNNNN fillers fairseq pads
# dictionaries with.
_SPECIAL_SYMBOL = re.compile(r"^(<[^<>\s]+>|\[[^\[\]\s]+\]|__[^_\s]+__|madeupword\d+)$")


def exit_buckets(
    num_layers: int,
    layers: Optional[Sequence[int]] = None,
    min_layer: int = 1,
    max_layer: Optional[int] = None,
    step: int = 1,
    option: str = "exit buckets",
) -> List[int]:
    """The sorted set of exit layers a hash may assign.

    ``layers`` wins over the min/max/step range when given. ``option`` names
    the command-line option in error messages.
    """
    if layers:
        buckets = sorted(set(int(x) for x in layers))
    else:
        max_layer = num_layers if max_layer is None else max_layer
        if step < 1:
            raise HashEEError(f"{option}: step must be >= 1, got {step}")
        if min_layer > max_layer:
            raise HashEEError(
                f"{option}: min layer {min_layer} is above max layer {max_layer}"
            )
        buckets = list(range(min_layer, max_layer + 1, step))
    bad = [b for b in buckets if not 1 <= b <= num_layers]
    if bad:
        raise HashEEError(
            f"{option}: exit layer(s) {bad} outside the stack's layers 1..{num_layers}"
        )
    return buckets


def parse_layer_list(text: Optional[str], option: str) -> Optional[List[int]]:
    """Parse '1,2,4' (as given on the command line) into a list of ints."""
    if text is None or str(text).strip() == "":
        return None
    try:
        return [int(x) for x in str(text).replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise HashEEError(
            f"{option}: expected a comma-separated list of layers, got {text!r}"
        ) from None


def special_symbol_mask(symbols: Iterable[str], nspecial: int) -> np.ndarray:
    """True for ids that must always exit at the last layer."""
    symbols = list(symbols)
    mask = np.zeros(len(symbols), dtype=bool)
    mask[:nspecial] = True
    for i, sym in enumerate(symbols):
        if _SPECIAL_SYMBOL.match(sym):
            mask[i] = True
    return mask


def _assign_by_rank(order: np.ndarray, buckets: Sequence[int], table: np.ndarray):
    """Cut ``order`` (ids, earliest exit first) into equal groups, one per bucket."""
    for group, bucket in zip(np.array_split(order, len(buckets)), buckets):
        table[group] = bucket


def random_table(
    counts: np.ndarray, special: np.ndarray, buckets: Sequence[int], num_layers: int, seed: int
) -> np.ndarray:
    """Each seen, non-special type gets a uniformly random bucket."""
    rng = np.random.default_rng(seed)
    draws = np.asarray(buckets)[rng.integers(len(buckets), size=len(counts))]
    hashable = (counts > 0) & ~special
    return np.where(hashable, draws, num_layers).astype(np.int64)


def frequency_table(
    counts: np.ndarray, special: np.ndarray, buckets: Sequence[int], num_layers: int
) -> np.ndarray:
    """Most frequent types exit earliest, in groups of equal type count."""
    table = np.full(len(counts), num_layers, dtype=np.int64)
    hashable = np.flatnonzero((counts > 0) & ~special)
    # Stable sort on -count keeps ties in id order, so the table is reproducible.
    order = hashable[np.argsort(-counts[hashable], kind="stable")]
    _assign_by_rank(order, buckets, table)
    return table


def mutual_information(counts: np.ndarray, labeled: np.ndarray) -> np.ndarray:
    """MI (nats) between "this occurrence is of type v" and its binary label, per type v.

    ``counts[v]`` occurrences of v, ``labeled[v]`` of them with label 1.
    """
    n = counts.astype(np.float64)
    k = labeled.astype(np.float64)
    total, positives = n.sum(), k.sum()
    if total == 0:
        return np.zeros_like(n)
    # The 2x2 table of (is v, label) per type, and its margins.
    cells = [(k, n, positives), (n - k, n, total - positives),
             (positives - k, total - n, positives), (total - n - positives + k, total - n, total - positives)]
    mi = np.zeros_like(n)
    for joint, row, col in cells:
        with np.errstate(divide="ignore", invalid="ignore"):
            term = joint / total * np.log(joint * total / (row * col))
        mi += np.where(joint > 0, term, 0.0)
    return mi


def mi_table(
    counts: np.ndarray, labeled: np.ndarray, special: np.ndarray, buckets: Sequence[int], num_layers: int
) -> np.ndarray:
    """Types with the highest mutual information with the label exit earliest, in equal groups."""
    table = np.full(len(counts), num_layers, dtype=np.int64)
    hashable = np.flatnonzero((counts > 0) & ~special)
    mi = mutual_information(counts, labeled)
    order = hashable[np.argsort(-mi[hashable], kind="stable")]
    _assign_by_rank(order, buckets, table)
    return table


def build_table(
    hash_type: str,
    stats: TokenStats,
    special: np.ndarray,
    buckets: Sequence[int],
    num_layers: int,
    seed: int,
) -> np.ndarray:
    """Dispatch on ``hash_type``; ``stats`` are training-set token statistics."""
    if hash_type == "random":
        return random_table(stats.counts, special, buckets, num_layers, seed)
    if hash_type == "frequency":
        return frequency_table(stats.counts, special, buckets, num_layers)
    if hash_type == "mi":
        if stats.labeled is None:
            raise HashEEError("the mi hash needs labeled statistics (both sides of the split)")
        return mi_table(stats.counts, stats.labeled, special, buckets, num_layers)
    raise HashEEError(
        f"unknown hash type {hash_type!r}; expected one of {', '.join(HASH_TYPES)}"
    )
