"""Token -> exit-layer hash functions (HashEE, docs/design.md section 2).

A table maps every vocabulary id to the layer (1..L) after which that token is
no longer updated. Every function here is a pure function of its inputs (token
statistics, embeddings, seed, buckets), so every distributed rank that runs it
on the same data and weights builds the same table without communicating.

One hash, ``random-incons``, has no fixed layer per type: its table holds a
*draw set* instead, the negative bit mask ``-(sum of 2**(layer-1))`` of the
buckets, and the stack draws a layer from it for every occurrence as the
tokens come in (modules/exit_table.py). Keeping that in the table, rather than
in a flag, means the checkpoint and the table file carry it like any other.
"""

import re
from typing import Iterable, List, Optional, Sequence

import numpy as np

from ..errors import HashEEError
from .token_stats import TokenStats

HASH_TYPES = ("random", "random-incons", "frequency", "mi", "cluster")
# Every table type: the hashes, and the decoder's difficulty table, built from a checkpoint's
# measurements (tables/difficulty.py) rather than hashed here.
TABLE_TYPES = HASH_TYPES + ("difficulty",)

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
            raise HashEEError(f"{option}: min layer {min_layer} is above max layer {max_layer}")
        buckets = list(range(min_layer, max_layer + 1, step))
    bad = [b for b in buckets if not 1 <= b <= num_layers]
    if bad:
        raise HashEEError(f"{option}: exit layer(s) {bad} outside the stack's layers 1..{num_layers}")
    return buckets


def parse_layer_list(text: Optional[str], option: str) -> Optional[List[int]]:
    """Parse '1,2,4' (as given on the command line) into a list of ints."""
    if text is None or str(text).strip() == "":
        return None
    try:
        return [int(x) for x in str(text).replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise HashEEError(f"{option}: expected a comma-separated list of layers, got {text!r}") from None


def special_symbol_mask(symbols: Iterable[str], nspecial: int) -> np.ndarray:
    """True for ids that must always exit at the last layer."""
    symbols = list(symbols)
    mask = np.zeros(len(symbols), dtype=bool)
    mask[:nspecial] = True
    for i, sym in enumerate(symbols):
        if _SPECIAL_SYMBOL.match(sym):
            mask[i] = True
    return mask


def exit_entry(layers: Sequence[int]) -> int:
    """The table entry for "one of ``layers``, drawn per occurrence": the layer
    itself when there is only one, a draw set otherwise."""
    layers = set(int(layer) for layer in layers)
    if len(layers) == 1:
        return layers.pop()
    return -sum(1 << (layer - 1) for layer in layers)


def draw_set_layers(code: int) -> List[int]:
    """The layers of a draw-set entry (``code`` < 0)."""
    mask = -int(code)
    return [bit + 1 for bit in range(mask.bit_length()) if mask >> bit & 1]


def format_exit(value: int) -> str:
    """A table entry as a table file shows it: a layer, or a draw set "1|2|3"."""
    return str(int(value)) if value > 0 else "|".join(map(str, draw_set_layers(value)))


def parse_exit(text: str, num_layers: int) -> int:
    """Inverse of ``format_exit``; ValueError (with the reason) for anything else."""
    try:
        layers = [int(part) for part in text.split("|")]
    except ValueError:
        raise ValueError(f"exit layer {text!r} is not an integer or a draw set like 1|2|3") from None
    bad = [layer for layer in layers if not 1 <= layer <= num_layers]
    if bad:
        raise ValueError(f"exit layer {bad[0]} outside the layers 1..{num_layers}")
    return exit_entry(layers)


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


def random_incons_table(counts: np.ndarray, special: np.ndarray, buckets: Sequence[int], num_layers: int) -> np.ndarray:
    """Every occurrence of a seen, non-special type draws its own bucket (the paper's
    inconsistent ablation): the table holds the draw set, the stack draws."""
    hashable = (counts > 0) & ~special
    return np.where(hashable, exit_entry(buckets), num_layers).astype(np.int64)


def frequency_table(counts: np.ndarray, special: np.ndarray, buckets: Sequence[int], num_layers: int) -> np.ndarray:
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
    cells = [
        (k, n, positives),
        (n - k, n, total - positives),
        (positives - k, total - n, positives),
        (total - n - positives + k, total - n, total - positives),
    ]
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


def kmeans(points: np.ndarray, k: int, seed: int, max_iterations: int = 100) -> np.ndarray:
    """Cluster index of every row of ``points``: k-means++ seeding, then Lloyd steps.

    Deterministic for a seed (numpy's generator), so every rank clusters the
    same embeddings identically. An emptied cluster is moved
    to the point farthest from its center, which keeps exactly ``k`` clusters.
    """
    points = np.asarray(points, dtype=np.float32)
    n = len(points)
    rng = np.random.default_rng(seed)
    sq_norms = (points**2).sum(axis=1)
    centers = [points[rng.integers(n)]]
    closest = ((points - centers[0]) ** 2).sum(axis=1, dtype=np.float64)
    for _ in range(1, k):
        total = closest.sum()
        pick = rng.choice(n, p=closest / total) if total > 0 else rng.integers(n)
        centers.append(points[pick])
        closest = np.minimum(closest, ((points - points[pick]) ** 2).sum(axis=1, dtype=np.float64))
    centers = np.stack(centers)
    for _ in range(max_iterations):
        distances = sq_norms[:, None] - 2.0 * points @ centers.T + (centers**2).sum(axis=1)[None]
        assignment = distances.argmin(axis=1)
        updated = centers.copy()
        for j in range(k):
            members = assignment == j
            if members.any():
                updated[j] = points[members].mean(axis=0, dtype=np.float64)
            else:
                far = int(distances[np.arange(n), assignment].argmax())
                updated[j], assignment[far] = points[far], j
        if np.array_equal(updated, centers):
            break
        centers = updated
    return assignment


def cluster_table(
    embeddings: np.ndarray,
    counts: np.ndarray,
    special: np.ndarray,
    buckets: Sequence[int],
    num_layers: int,
    seed: int,
) -> np.ndarray:
    """k-means over the token embeddings, one cluster per bucket; the cluster whose
    members' embedding norms sum smallest exits earliest."""
    table = np.full(len(counts), num_layers, dtype=np.int64)
    hashable = np.flatnonzero((counts > 0) & ~special)
    if hashable.size == 0:
        return table
    points = np.asarray(embeddings, dtype=np.float32)[hashable]
    k = min(len(buckets), hashable.size)
    assignment = kmeans(points, k, seed)
    norm_sums = np.bincount(assignment, weights=np.linalg.norm(points, axis=1), minlength=k)
    rank_of_cluster = np.empty(k, dtype=np.int64)
    rank_of_cluster[np.argsort(norm_sums, kind="stable")] = np.arange(k)
    table[hashable] = np.asarray(sorted(buckets))[rank_of_cluster[assignment]]
    return table


def build_table(
    hash_type: str,
    stats: TokenStats,
    special: np.ndarray,
    buckets: Sequence[int],
    num_layers: int,
    seed: int,
    embeddings: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Dispatch on ``hash_type``; ``stats`` are training-set token statistics,
    ``embeddings`` the (V, d) token-embedding matrix (for ``cluster``)."""
    if hash_type == "random":
        return random_table(stats.counts, special, buckets, num_layers, seed)
    if hash_type == "random-incons":
        return random_incons_table(stats.counts, special, buckets, num_layers)
    if hash_type == "frequency":
        return frequency_table(stats.counts, special, buckets, num_layers)
    if hash_type == "mi":
        if stats.labeled is None:
            raise HashEEError("the mi hash needs labeled statistics (both sides of the split)")
        return mi_table(stats.counts, stats.labeled, special, buckets, num_layers)
    if hash_type == "cluster":
        if embeddings is None or len(embeddings) != len(stats.counts):
            raise HashEEError("the cluster hash needs the model's token-embedding matrix, one row per symbol")
        return cluster_table(embeddings, stats.counts, special, buckets, num_layers, seed)
    raise HashEEError(f"unknown hash type {hash_type!r}; expected one of {', '.join(HASH_TYPES)}")
