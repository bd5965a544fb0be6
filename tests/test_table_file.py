"""The exit-table file: round trip, and one clear error for every way it can be wrong."""

import re

import numpy as np
import pytest

from fairseq_hashee.errors import HashEEError
from fairseq_hashee.tables.table_file import ExitTableFile, read_table

from helpers import run_cli, tiny_dictionary

LAYERS = 4


@pytest.fixture
def table_file(tmp_path):
    symbols = list(tiny_dictionary().symbols)
    table = np.random.default_rng(0).integers(1, LAYERS + 1, size=len(symbols))
    table[:4] = LAYERS  # fairseq's special symbols run every layer
    entry = ExitTableFile("encoder", "frequency", {"buckets": "1,2,3,4", "seed": "1"}, LAYERS, symbols, table)
    path = tmp_path / "enc.table"
    entry.write(str(path))
    return path, symbols, table


def test_round_trip(table_file):
    path, symbols, table = table_file
    loaded = read_table(str(path), symbols, "encoder", LAYERS)
    assert np.array_equal(loaded.table, table)
    assert loaded.hash_type == "frequency" and loaded.options == {"buckets": "1,2,3,4", "seed": "1"}
    assert "w3\t" in path.read_text()  # readable: one symbol per line


def test_draw_sets_round_trip(tmp_path):
    symbols = list(tiny_dictionary().symbols)
    table = np.where(np.arange(len(symbols)) < 4, LAYERS, -0b0111)
    path = tmp_path / "incons.table"
    ExitTableFile("encoder", "random-incons", {"buckets": "1,2,3"}, LAYERS, symbols, table).write(str(path))
    assert "w3\t1|2|3\n" in path.read_text()
    assert np.array_equal(read_table(str(path), symbols, "encoder", LAYERS).table, table)


def _edit(path, old, new):
    path.write_text(path.read_text().replace(old, new, 1))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p, s: None, None),
        (lambda p, s: _edit(p, "num_layers: 4", "num_layers: 6"), "built for 6 encoder layers, the model has 4"),
        (lambda p, s: _edit(p, "stack: encoder", "stack: middle"), "unknown stack 'middle'"),
        (lambda p, s: _edit(p, "stack: encoder", "stack: decoder"), "a decoder table cannot drive the encoder"),
        (lambda p, s: _edit(p, "w5\t", "w5x\t"), ":18: expected symbol 'w5', found 'w5x"),
        (
            lambda p, s: p.write_text(re.sub(r"\nw7\t\d+", "\nw7\t9", p.read_text())),
            ":20: exit layer 9 outside the layers 1..4",
        ),
        (lambda p, s: p.write_text(re.sub(r"\nw7\t\d+", "\nw7\t2|5", p.read_text())), ":20: exit layer 5 outside"),
        (lambda p, s: p.write_text(re.sub(r"\nw7\t\d+", "\nw7\tlast", p.read_text())), ":20: exit layer 'last' is not"),
        (lambda p, s: p.write_text(p.read_text() + "extra\t1\n"), "unexpected line after the table"),
        (lambda p, s: p.write_text("\n".join(p.read_text().split("\n")[:20])), "truncated"),
        (lambda p, s: p.write_text(p.read_text()[:40]), "truncated"),
        (lambda p, s: p.write_text("hello\n"), ":1: not a fairseq-hashee exit table"),
        (lambda p, s: p.write_bytes(b"\xff\xfe\x00"), "not a UTF-8 exit-table file"),
        (lambda p, s: _edit(p, "hash_type:", "hash type:"), ":3: garbled header line"),
        (
            lambda p, s: _edit(p, "</s>\t4", "</s>\t1"),
            ":11: special symbol '</s>' must run all 4 layers, not exit at 1",
        ),
        (lambda p, s: p.unlink(), "no such exit-table file"),
    ],
)
def test_bad_files(table_file, mutate, message):
    path, symbols, _ = table_file
    mutate(path, symbols)
    if message is None:
        read_table(str(path), symbols, "encoder", LAYERS)
        return
    with pytest.raises(HashEEError, match=message.replace("(", r"\(").replace(".", r"\.")) as err:
        read_table(str(path), symbols, "encoder", LAYERS)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_another_dictionary(table_file):
    path, symbols, _ = table_file
    other = symbols[:-1] + ["zzz"]
    with pytest.raises(HashEEError, match="built for another dictionary"):
        read_table(str(path), other, "encoder", LAYERS)


def test_never_overwritten_unless_asked(table_file):
    path, symbols, table = table_file
    before = path.read_text()
    entry = ExitTableFile("encoder", "random", {}, LAYERS, symbols, np.full(len(symbols), LAYERS))
    with pytest.raises(HashEEError, match="exists; pass --force"):
        entry.write(str(path))
    assert path.read_text() == before
    entry.write(str(path), overwrite=True)
    assert "hash_type: random" in path.read_text()


@pytest.mark.slow
def test_tool_builds_a_table_that_training_loads(data_bin, tmp_path):
    out = tmp_path / "enc.table"
    proc = run_cli(
        "fairseq_hashee.cli.table", data_bin, "--stack", "encoder", "--num-layers", 2, "--hash-type", "mi", "-o", out
    )
    assert "types /" in proc.stdout and "expected encoder FLOPs speed-up on valid" in proc.stdout
    again = run_cli(
        "fairseq_hashee.cli.table", data_bin, "--stack", "encoder", "--num-layers", 2, "-o", out, check=False
    )
    assert again.returncode != 0 and "exists; pass --force" in again.stderr

    from test_cli import LAYERS as CLI_LAYERS
    from test_cli import tables, train

    assert CLI_LAYERS == 2
    train(data_bin, tmp_path / "ckpt", "--max-update", 1, "--encoder-hash-table", out)
    enc, _ = tables(tmp_path / "ckpt" / "checkpoint_last.pt")
    symbols = [line.split("\t")[0] for line in out.read_text().split("\n\n", 1)[1].splitlines()]
    assert np.array_equal(enc.numpy(), read_table(str(out), symbols, "encoder", 2).table)

    # the last --encoder-layers wins: a 3-layer encoder given the 2-layer table
    wrong = train(data_bin, tmp_path / "wrong", "--encoder-layers", 3, "--encoder-hash-table", out, check=False)
    assert "error: " in wrong.stderr and "built for 2 encoder layers, the model has 3" in wrong.stderr
