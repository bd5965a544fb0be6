import numpy as np
import pytest

from fairseq_hashee import hash_functions as hf

L = 6
SYMBOLS = ["<s>", "<pad>", "</s>", "<unk>"] + [f"t{i}" for i in range(20)] + ["<mask>", "[CLS]", "__en__", "madeupword0000"]
SPECIAL = hf.special_symbol_mask(SYMBOLS, nspecial=4)


def _counts(seed=0):
    counts = np.random.default_rng(seed).integers(1, 1000, size=len(SYMBOLS))
    counts[7] = 0  # an unseen type
    return counts


def test_special_symbols_are_recognised():
    specials = [s for s, m in zip(SYMBOLS, SPECIAL) if m]
    assert specials == ["<s>", "<pad>", "</s>", "<unk>", "<mask>", "[CLS]", "__en__", "madeupword0000"]


@pytest.mark.parametrize("hash_type", hf.HASH_TYPES)
def test_tables_are_deterministic_and_keep_specials_and_unseen_at_last_layer(hash_type):
    buckets = hf.exit_buckets(L)
    a = hf.build_table(hash_type, _counts(), SPECIAL, buckets, L, seed=3)
    b = hf.build_table(hash_type, _counts(), SPECIAL, buckets, L, seed=3)
    assert np.array_equal(a, b)
    assert (a[SPECIAL] == L).all()
    assert a[7] == L
    assert set(a.tolist()) <= set(buckets) | {L}


def test_random_depends_on_seed_only():
    buckets = [1, 2, 3]
    a = hf.build_table("random", _counts(0), SPECIAL, buckets, L, seed=1)
    b = hf.build_table("random", _counts(1), SPECIAL, buckets, L, seed=1)  # other counts, same seen set
    c = hf.build_table("random", _counts(0), SPECIAL, buckets, L, seed=2)
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
    with pytest.raises(ValueError, match=r"--encoder-exit-layers: exit layer\(s\) \[7\] outside the stack's layers 1..6"):
        hf.exit_buckets(6, layers=[1, 7], option="--encoder-exit-layers")
    with pytest.raises(ValueError, match="outside"):
        hf.exit_buckets(6, min_layer=0)
    with pytest.raises(ValueError, match="above max"):
        hf.exit_buckets(6, min_layer=5, max_layer=2)
    with pytest.raises(ValueError, match="expected a comma-separated list"):
        hf.parse_layer_list("1,two", "--decoder-exit-layers")


def test_unknown_hash_type():
    with pytest.raises(ValueError, match="unknown hash type 'md5'"):
        hf.build_table("md5", _counts(), SPECIAL, [1], L, seed=1)
