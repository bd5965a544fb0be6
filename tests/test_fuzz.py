"""Fuzzing the readers of user files: whatever the bytes, they load or raise HashEEError.

Bounded (a fixed number of examples per reader) and derandomized, so CI sees
the same inputs every run. Each reader starts from a valid file and applies
random edits: byte flips, inserted and deleted bytes, truncation, lines
dropped, duplicated or swapped.
"""

import numpy as np
import pytest
import torch
from fairseq.data import Dictionary
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fairseq_hashee.errors import HashEEError
from fairseq_hashee.tables.dictionary_file import check_dictionary_file
from fairseq_hashee.tables.table_file import ExitTableFile, read_table

from helpers import tiny_dictionary

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
LAYERS = 4

_edit = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 16)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
    st.tuples(st.just("drop_line"), st.integers(0, 10**6)),
    st.tuples(st.just("repeat_line"), st.integers(0, 10**6)),
    st.tuples(st.just("swap_lines"), st.integers(0, 10**6), st.integers(0, 10**6)),
)
edits = st.lists(_edit, min_size=1, max_size=4)


def mutate(data: bytes, ops) -> bytes:
    for op in ops:
        kind, at = op[0], op[1] % (len(data) + 1)
        if kind == "flip" and data:
            at %= len(data)
            data = data[:at] + bytes([op[2]]) + data[at + 1 :]
        elif kind == "insert":
            data = data[:at] + op[2] + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + op[2] :]
        elif kind == "truncate":
            data = data[:at]
        else:
            lines = data.split(b"\n")
            i = op[1] % len(lines)
            if kind == "drop_line":
                del lines[i]
            elif kind == "repeat_line":
                lines.insert(i, lines[i])
            else:
                j = op[2] % len(lines)
                lines[i], lines[j] = lines[j], lines[i]
            data = b"\n".join(lines)
    return data


@pytest.fixture(scope="module")
def valid_table(tmp_path_factory):
    symbols = list(tiny_dictionary().symbols)
    table = np.random.default_rng(0).integers(1, LAYERS + 1, size=len(symbols))
    table[:4] = LAYERS
    table[10] = -0b0110  # a draw set
    path = tmp_path_factory.mktemp("fuzz") / "valid.table"
    ExitTableFile("encoder", "random", {"buckets": "1,2,3,4", "seed": "1"}, LAYERS, symbols, table).write(str(path))
    return path.read_bytes(), symbols


@FUZZ
@given(ops=edits)
def test_table_loader(valid_table, tmp_path, ops):
    data, symbols = valid_table
    path = tmp_path / "fuzzed.table"
    path.write_bytes(mutate(data, ops))
    try:
        loaded = read_table(str(path), symbols, "encoder", LAYERS)
    except HashEEError as err:
        assert "\n" not in str(err) and str(path) in str(err)
        return
    # Whatever loads is a usable table: every entry a layer or a draw set within the stack.
    assert len(loaded.table) == len(symbols)
    assert ((loaded.table >= 1) & (loaded.table <= LAYERS) | (loaded.table < 0)).all()


@FUZZ
@given(ops=edits)
def test_dictionary_check_catches_what_fairseq_would_choke_on(tmp_path, ops):
    symbols = [f"w{i} {100 - i}" for i in range(30)] + ["w3 7 #fairseq:overwrite", "dup 1", "sp ace 2"]
    path = tmp_path / "dict.txt"
    path.write_bytes(mutate(("\n".join(symbols) + "\n").encode(), ops))
    try:
        check_dictionary_file(str(path))
    except HashEEError as err:
        assert "\n" not in str(err) and str(path) in str(err)
        return
    assert len(Dictionary.load(str(path))) > 4  # what the check lets through, fairseq loads


@pytest.fixture(scope="module")
def tiny_cpt_weights(tmp_path_factory):
    pytest.importorskip("transformers")
    from hf_reference import cpt_reference, save_cpt

    bert, decoder = cpt_reference()
    hf_dir = save_cpt(bert, decoder, tmp_path_factory.mktemp("fuzz") / "cpt")
    from fairseq_hashee.conversion.hf_files import load_config, load_vocab, load_weights

    return _Checkpoint(load_weights(str(hf_dir)), load_config(str(hf_dir)), load_vocab(str(hf_dir)))


class _Checkpoint(tuple):
    """(weights, config, vocab), with a repr short enough for hypothesis' reports."""

    def __new__(cls, *parts):
        return super().__new__(cls, parts)

    def __repr__(self):
        return "<tiny CPT checkpoint>"


_key_edit = st.one_of(
    st.tuples(st.just("drop"), st.integers(0, 10**6)),
    st.tuples(st.just("rename"), st.integers(0, 10**6), st.text("abcdefghijklmnopqrstuvwxyz._0123456789", max_size=12)),
    st.tuples(st.just("reshape"), st.integers(0, 10**6), st.integers(1, 5)),
    st.tuples(st.just("add"), st.text("abcdefghijklmnopqrstuvwxyz._0123456789", min_size=1, max_size=30)),
)


@FUZZ
@given(ops=st.lists(_key_edit, min_size=1, max_size=3))
def test_checkpoint_key_mapping(tiny_cpt_weights, ops):
    from fairseq_hashee.cli.convert import build_checked_model, choose_arch
    from fairseq_hashee.conversion.key_mapping import convert_state
    from fairseq_hashee.conversion.vocabulary import map_vocab

    weights, config, symbols = tiny_cpt_weights
    weights = dict(weights)
    for op in ops:
        names = sorted(weights)
        if not names:
            break
        name = names[op[1] % len(names)] if op[0] != "add" else None
        if op[0] == "drop":
            del weights[name]
        elif op[0] == "rename":
            weights[name + op[2]] = weights.pop(name)
        elif op[0] == "reshape":
            weights[name] = torch.zeros(op[2], *weights[name].shape[1:])
        else:
            weights[op[1]] = torch.zeros(2)
    vocab = map_vocab(symbols, "vocab")
    try:
        converted = convert_state(weights, config, vocab, "hf")
        arch, _ = choose_arch(converted)
        dictionary = Dictionary()
        for symbol in vocab.symbols[4:]:
            dictionary.add_symbol(symbol)
        build_checked_model(converted, arch, dictionary)
    except HashEEError as err:
        assert "\n" not in str(err)


@pytest.fixture(scope="module")
def valid_safetensors(tmp_path_factory):
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("fuzz") / "model.safetensors"
    save_file(
        {"a.weight": torch.randn(3, 4), "b.bias": torch.arange(5), "c": torch.ones(2, dtype=torch.bfloat16)}, str(path)
    )
    return path.read_bytes()


@FUZZ
@given(ops=edits)
def test_safetensors_reader(valid_safetensors, tmp_path, ops):
    from fairseq_hashee.conversion.hf_files import read_safetensors

    path = tmp_path / "model.safetensors"
    path.write_bytes(mutate(valid_safetensors, ops))
    try:
        tensors = read_safetensors(str(path))
    except HashEEError as err:
        assert "\n" not in str(err) and str(path) in str(err)
        return
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())


@pytest.fixture(scope="module")
def valid_checkpoint(tmp_path_factory):
    import argparse

    path = tmp_path_factory.mktemp("fuzz") / "checkpoint.pt"
    state = {"model": {"w": torch.randn(3, 4), "b": torch.arange(5)}, "args": argparse.Namespace(arch="tiny")}
    torch.save({**state, "optimizer_history": [{"num_updates": 3}]}, path)
    return path.read_bytes()


@FUZZ
@given(ops=edits)
def test_checkpoint_loader(valid_checkpoint, tmp_path, ops):
    """Ours (hashee-compare, hashee-calibrate) and fairseq's, through the plugin's hook: a file
    torch cannot load gets the same line from both, never torch's advice about weights_only."""
    from fairseq import checkpoint_utils

    from fairseq_hashee.checkpoints import load_checkpoint

    path = tmp_path / "checkpoint.pt"
    path.write_bytes(mutate(valid_checkpoint, ops))
    try:
        state = load_checkpoint(str(path))
    except HashEEError as err:
        assert "\n" not in str(err) and str(err).startswith(f"{path}: ") and "weights_only" not in str(err)
        if "cannot be loaded" in str(err):
            with pytest.raises(HashEEError) as theirs:
                checkpoint_utils.load_checkpoint_to_cpu(str(path))
            assert str(theirs.value) == str(err)
        return
    assert isinstance(state["model"], dict)


RAW = __import__("pathlib").Path(__file__).parent / "data" / "raw"
# One file per release whose bytes get fuzzed (the others stay valid).
RAW_TARGETS = [
    ("cnndm", "cnn/stories/7c107cc484896864a3c0b0b271c79e5b4fc8a4ef.story"),
    ("cnndm", "url_lists/all_train.txt"),
    ("reddit", "tifu_all_tokenized_and_filtered.json"),
    ("csl", "SUMMARY.csl/train.json"),
    ("ttnews", None),  # its first file, whatever the release names it
]


@pytest.mark.parametrize("dataset, relative", RAW_TARGETS)
def test_raw_release_readers(tmp_path_factory, dataset, relative):
    """hashee-prepare on a release with one file mutated: it prepares, or stops with one clear line."""
    import shutil

    from fairseq_hashee.cli.prepare import prepare

    source = RAW / dataset
    target = relative or sorted(p.relative_to(source) for p in source.rglob("*") if p.is_file())[0]
    original = (source / target).read_bytes()

    @FUZZ
    @given(ops=edits)
    def run(ops):
        work = tmp_path_factory.mktemp(dataset)
        shutil.copytree(source, work / "raw")
        (work / "raw" / target).write_bytes(mutate(original, ops))
        try:
            prepare(dataset, str(work / "raw"), str(work / "out"))
        except HashEEError as err:
            assert "\n" not in str(err)
            assert not (work / "out").exists()  # nothing half-written
        shutil.rmtree(work)

    run()
