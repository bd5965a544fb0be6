import math

import numpy as np
import pytest
import torch

from fairseq_hashee.modules.exit_table import draw_exits
from fairseq_hashee.tables import hash_functions as hf
from fairseq_hashee.tables.token_stats import TokenStats, token_stats

L = 6
SYMBOLS = (
    ["<s>", "<pad>", "</s>", "<unk>"] + [f"t{i}" for i in range(20)] + ["<mask>", "[CLS]", "__en__", "madeupword0000"]
)
SPECIAL = hf.special_symbol_mask(SYMBOLS, nspecial=4)


def _counts(seed=0):
    counts = np.random.default_rng(seed).integers(1, 1000, size=len(SYMBOLS))
    counts[7] = 0  # an unseen type
    return counts


def _embeddings(seed=0):
    return np.random.default_rng(seed).normal(size=(len(SYMBOLS), 8)).astype(np.float32)


def _layers(entry):
    return hf.draw_set_layers(entry) if entry < 0 else [entry]


def _stats(seed=0):
    counts = _counts(seed)
    labeled = np.random.default_rng(seed + 1).integers(0, counts + 1)
    return TokenStats(counts, labeled)


def test_special_symbols_are_recognised():
    specials = [s for s, m in zip(SYMBOLS, SPECIAL) if m]
    assert specials == ["<s>", "<pad>", "</s>", "<unk>", "<mask>", "[CLS]", "__en__", "madeupword0000"]


@pytest.mark.parametrize("hash_type", hf.HASH_TYPES)
def test_tables_are_deterministic_and_keep_specials_and_unseen_at_last_layer(hash_type):
    buckets = hf.exit_buckets(L)
    a = hf.build_table(hash_type, _stats(), SPECIAL, buckets, L, seed=3, embeddings=_embeddings())
    b = hf.build_table(hash_type, _stats(), SPECIAL, buckets, L, seed=3, embeddings=_embeddings())
    assert np.array_equal(a, b)
    assert (a[SPECIAL] == L).all()
    assert a[7] == L
    assert all(set(_layers(entry)) <= set(buckets) for entry in a.tolist())


def test_random_depends_on_seed_only():
    buckets = [1, 2, 3]
    a = hf.build_table("random", _stats(0), SPECIAL, buckets, L, seed=1)
    b = hf.build_table("random", _stats(1), SPECIAL, buckets, L, seed=1)  # other counts, same seen set
    c = hf.build_table("random", _stats(0), SPECIAL, buckets, L, seed=2)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_frequency_groups_are_equal_and_ordered():
    counts = _counts()
    buckets = [1, 3, 5]
    table = hf.frequency_table(counts, SPECIAL, buckets, L)
    hashable = np.flatnonzero((counts > 0) & ~SPECIAL)
    sizes = [int((table[hashable] == b).sum()) for b in buckets]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(hashable)
    # a more frequent type never exits later than a less frequent one
    for i in hashable:
        for j in hashable:
            if counts[i] > counts[j]:
                assert table[i] <= table[j]


def test_frequency_by_hand():
    symbols = ["<s>", "<pad>", "</s>", "<unk>", "a", "b", "c", "d"]
    counts = np.array([9, 9, 9, 9, 5, 50, 1, 20])
    table = hf.frequency_table(counts, hf.special_symbol_mask(symbols, 4), [1, 2], 4)
    assert table.tolist() == [4, 4, 4, 4, 2, 1, 2, 1]


def test_buckets():
    assert hf.exit_buckets(6) == [1, 2, 3, 4, 5, 6]
    assert hf.exit_buckets(6, min_layer=2, max_layer=6, step=2) == [2, 4, 6]
    assert hf.exit_buckets(6, layers=[3, 1, 3]) == [1, 3]
    with pytest.raises(
        ValueError, match=r"--encoder-exit-layers: exit layer\(s\) \[7\] outside the stack's layers 1..6"
    ):
        hf.exit_buckets(6, layers=[1, 7], option="--encoder-exit-layers")
    with pytest.raises(ValueError, match="outside"):
        hf.exit_buckets(6, min_layer=0)
    with pytest.raises(ValueError, match="above max"):
        hf.exit_buckets(6, min_layer=5, max_layer=2)
    with pytest.raises(ValueError, match="expected a comma-separated list"):
        hf.parse_layer_list("1,two", "--decoder-exit-layers")


def test_unknown_hash_type():
    with pytest.raises(ValueError, match="unknown hash type 'md5'"):
        hf.build_table("md5", _stats(), SPECIAL, [1], L, seed=1)


def test_mi_on_a_hand_made_corpus():
    # ids: 0..3 specials, 4=a, 5=b, 6=c; pairs (source | summary): "a b c | a" and "a c | c"
    symbols = ["<s>", "<pad>", "</s>", "<unk>", "a", "b", "c"]
    sources = [torch.tensor([4, 5, 6]), torch.tensor([4, 6])]
    summaries = [torch.tensor([4]), torch.tensor([6])]
    stats = token_stats(sources, len(symbols), paired=summaries)
    assert stats.counts.tolist() == [0, 0, 0, 0, 2, 1, 2]
    assert stats.labeled.tolist() == [0, 0, 0, 0, 1, 0, 1]
    # 5 source occurrences, 2 of them labeled. Type a: 2 occurrences, 1 labeled.
    by_hand_a = (
        1 / 5 * math.log((1 / 5) / ((2 / 5) * (2 / 5)))  # is a, labeled
        + 1 / 5 * math.log((1 / 5) / ((2 / 5) * (3 / 5)))  # is a, not labeled
        + 1 / 5 * math.log((1 / 5) / ((3 / 5) * (2 / 5)))  # not a, labeled
        + 2 / 5 * math.log((2 / 5) / ((3 / 5) * (3 / 5)))  # not a, not labeled
    )
    # Type b: 1 occurrence, not labeled.
    by_hand_b = (
        1 / 5 * math.log((1 / 5) / ((1 / 5) * (3 / 5)))
        + 2 / 5 * math.log((2 / 5) / ((4 / 5) * (2 / 5)))
        + 2 / 5 * math.log((2 / 5) / ((4 / 5) * (3 / 5)))
    )
    mi = hf.mutual_information(stats.counts, stats.labeled)
    assert mi[4] == pytest.approx(by_hand_a) and mi[6] == pytest.approx(by_hand_a)
    assert mi[5] == pytest.approx(by_hand_b)
    table = hf.build_table("mi", stats, hf.special_symbol_mask(symbols, 4), [1, 2], 3, seed=0)
    # b has the higher MI (0.0437 vs 0.0014 nats): it exits first.
    assert by_hand_b > by_hand_a
    assert table.tolist() == [3, 3, 3, 3, 1, 1, 2]


def test_mi_groups_are_equal_and_ordered():
    stats = _stats()
    table = hf.build_table("mi", stats, SPECIAL, [2, 4, 6], L, seed=0)
    mi = hf.mutual_information(stats.counts, stats.labeled)
    hashable = np.flatnonzero((stats.counts > 0) & ~SPECIAL)
    sizes = [int((table[hashable] == b).sum()) for b in (2, 4, 6)]
    assert max(sizes) - min(sizes) <= 1
    for i in hashable:
        for j in hashable:
            if mi[i] > mi[j]:
                assert table[i] <= table[j]


def test_draw_set_entries():
    assert hf.exit_entry([3, 1, 2]) == -7 and hf.exit_entry([4, 4]) == 4
    assert hf.draw_set_layers(-0b101001) == [1, 4, 6]
    for entry in (5, -7, -0b101001):
        assert hf.parse_exit(hf.format_exit(entry), L) == entry
    assert hf.format_exit(-7) == "1|2|3"
    with pytest.raises(ValueError, match="exit layer 7 outside the layers 1..6"):
        hf.parse_exit("1|7", L)
    with pytest.raises(ValueError, match="not an integer or a draw set"):
        hf.parse_exit("1|x", L)


def test_random_incons_draws_every_occurrence_uniformly_from_the_buckets():
    buckets = [2, 3, 5]
    table = hf.build_table("random-incons", _stats(), SPECIAL, buckets, L, seed=0)
    hashable = (_counts() > 0) & ~SPECIAL
    assert (table[hashable] == hf.exit_entry(buckets)).all() and (table[~hashable] == L).all()

    tokens = torch.tensor([8] * 30000 + [0] * 100)  # one type, many occurrences; a special symbol
    exits = draw_exits(torch.from_numpy(table)[tokens], L, torch.Generator().manual_seed(0))
    assert (exits[-100:] == L).all()
    shares = torch.bincount(exits[:30000], minlength=L + 1).double() / 30000
    assert set(exits[:30000].tolist()) == set(buckets)
    assert torch.allclose(shares[buckets], torch.full((3,), 1 / 3, dtype=torch.double), atol=0.01)


def test_kmeans_keeps_k_clusters_and_is_deterministic():
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(size=(20, 4)), np.zeros((5, 4)), np.zeros((5, 4))])
    a, b = hf.kmeans(points, 6, seed=4), hf.kmeans(points, 6, seed=4)
    assert np.array_equal(a, b)
    assert sorted(set(a.tolist())) == list(range(6))
    # identical points (more clusters than distinct blobs) end in one cluster each time
    assert len(set(a[20:].tolist())) == 1


def test_cluster_groups_ordered_by_sum_of_member_norms():
    rng = np.random.default_rng(1)
    symbols = ["<s>", "<pad>", "</s>", "<unk>"] + [f"t{i}" for i in range(60)]
    special = hf.special_symbol_mask(symbols, 4)
    # Three well-separated blobs: 30 small vectors, 20 mid-sized, 10 large,
    # whose norm sums are about 30*1 < 10*5 < 20*3 (the middle blob is last).
    centers = {1.0: np.array([1.0, 0, 0]), 3.0: np.array([0, 3.0, 0]), 5.0: np.array([0, 0, 5.0])}
    sizes = {1.0: 30, 3.0: 20, 5.0: 10}
    rows, blob = [np.zeros((4, 3))], [None] * 4
    for scale, size in sizes.items():
        rows.append(centers[scale] + 0.05 * rng.normal(size=(size, 3)))
        blob += [scale] * size
    embeddings = np.concatenate(rows)
    stats = TokenStats(np.ones(len(symbols), dtype=np.int64))
    table = hf.build_table("cluster", stats, special, [1, 2, 4], L, seed=0, embeddings=embeddings)
    assert (table[:4] == L).all()
    by_blob = {scale: set(table[4:][np.array(blob[4:]) == scale].tolist()) for scale in sizes}
    assert by_blob == {1.0: {1}, 5.0: {2}, 3.0: {4}}
    norms = np.linalg.norm(embeddings, axis=1)
    sums = [norms[4:][table[4:] == b].sum() for b in (1, 2, 4)]
    assert sums == sorted(sums)


def test_cluster_needs_embeddings():
    with pytest.raises(ValueError, match="cluster hash needs the model's token-embedding matrix"):
        hf.build_table("cluster", _stats(), SPECIAL, [1, 2], L, seed=0)
