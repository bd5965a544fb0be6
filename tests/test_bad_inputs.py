"""The bad-input matrix, through the command-line tools a user runs: one line on
stderr, starting with ``error:``, naming the file, line or option at fault, and
no checkpoint written. (Options refused by argparse itself, such as an unknown
hash type, are in test_cli.py.)"""

import re
import shutil

import pytest
from test_cli import LAYERS, _one_error_line, generate, train

from fairseq_hashee.checkpoints import load_checkpoint
from fairseq_hashee.errors import HashEEError
from fairseq_hashee.io_utils import atomic_write

from helpers import USER_DIR, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture
def bin_copy(data_bin, tmp_path):
    copy = tmp_path / "bin"
    shutil.copytree(data_bin, copy)
    return copy


def _rewrite_line(path, number, new):
    lines = path.read_bytes().split(b"\n")
    lines[number - 1] = new
    path.write_bytes(b"\n".join(lines))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda d: _rewrite_line(d / "dict.src.txt", 3, b"word-without-count"),
            "dict.src.txt:3: expected '<symbol> <count> [#fairseq:overwrite]', got 'word-without-count'",
        ),
        (
            lambda d: _rewrite_line(d / "dict.src.txt", 5, (d / "dict.src.txt").read_bytes().split(b"\n")[1]),
            "dict.src.txt:5: symbol",
        ),
        (lambda d: _rewrite_line(d / "dict.tgt.txt", 2, b"caf\xe9 12"), "dict.tgt.txt:2: not UTF-8"),
        (lambda d: (d / "dict.src.txt").write_text(""), "dict.src.txt: the dictionary has no symbols"),
    ],
    ids=["malformed-line", "duplicate-symbol", "not-utf8", "empty"],
)
def test_malformed_dictionaries(bin_copy, tmp_path, mutate, message):
    mutate(bin_copy)
    line = _one_error_line(train(bin_copy, tmp_path / "ckpt", "--max-update", 1, check=False))
    assert message in line
    assert not (tmp_path / "ckpt").exists() or not list((tmp_path / "ckpt").glob("*.pt"))


@pytest.mark.parametrize(
    "options, message",
    [
        (["--hash-seed", -1], "--hash-seed: must be a non-negative integer, got -1"),
        (["--encoder-exit-step", 0], "--encoder-exit-min/max/step: step must be >= 1, got 0"),
        (["--decoder-exits", "--decoder-exit-max", 3], "--decoder-exit-min/max/step: exit layer(s) [3] outside"),
        (["--encoder-exit-min", 2, "--encoder-exit-max", 1], "min layer 2 is above max layer 1"),
        (["--encoder-hash-table", "/nonexistent/enc.table"], "/nonexistent/enc.table: no such exit-table file"),
        (["--encoder-layerdrop", 0.1], "--encoder-layerdrop: layer drop is not supported by HashEE models"),
        (["--checkpoint-activations"], "--checkpoint-activations: activation checkpointing is not supported"),
    ],
)
def test_bad_task_and_model_options(data_bin, tmp_path, options, message):
    line = _one_error_line(train(data_bin, tmp_path, "--max-update", 1, *options, check=False))
    assert message in line
    assert not list(tmp_path.glob("*.pt"))


def _table(data_bin, tmp_path, stack):
    out = tmp_path / f"{stack}.table"
    run_cli("fairseq_hashee.cli.table", data_bin, "--stack", stack, "--num-layers", LAYERS, "-o", out)
    return out


def test_decoder_table_given_to_the_encoder(data_bin, tmp_path):
    table = _table(data_bin, tmp_path, "decoder")
    line = _one_error_line(train(data_bin, tmp_path, "--encoder-hash-table", table, check=False))
    assert f"{table}: a decoder table cannot drive the encoder" in line


def test_table_sending_every_token_to_layer_1(data_bin, tmp_path):
    table = _table(data_bin, tmp_path, "encoder")
    text = table.read_text().split("\n\n", 1)
    body = "\n".join(line.rsplit("\t", 1)[0] + "\t1" for line in text[1].splitlines())
    table.write_text(text[0] + "\n\n" + body + "\n")
    line = _one_error_line(train(data_bin, tmp_path, "--encoder-hash-table", table, check=False))
    assert f"{table}:9: special symbol '<s>' must run all {LAYERS} layers, not exit at 1" in line


def test_generation_on_inputs_longer_than_max_positions(data_bin, tmp_path):
    train(data_bin, tmp_path, "--max-update", 1)
    proc = run_cli(
        "fairseq_cli.generate",
        data_bin,
        "--path",
        tmp_path / "checkpoint_last.pt",
        "--user-dir",
        USER_DIR,
        "--task",
        "hashee_summarization",
        "-s",
        "src",
        "-t",
        "tgt",
        "--gen-subset",
        "test",
        "--max-source-positions",
        8,
        "--cpu",
        check=False,
    )
    line = _one_error_line(proc)
    assert "longer than the model's max positions" in line and "--truncate-source" in line
    # ... and with --truncate-source the same run decodes every example
    ok = generate(data_bin, tmp_path / "checkpoint_last.pt", "--max-source-positions", 8, "--truncate-source")
    assert len([x for x in ok.stdout.splitlines() if x.startswith("H-")]) == 10


def test_empty_test_split(data_bin, text_corpus, tmp_path):
    (tmp_path / "empty.src").write_text("")
    (tmp_path / "empty.tgt").write_text("")
    empty_bin = tmp_path / "bin"
    run_cli(
        "fairseq_cli.preprocess",
        "-s",
        "src",
        "-t",
        "tgt",
        "--testpref",
        tmp_path / "empty",
        "--srcdict",
        data_bin / "dict.src.txt",
        "--tgtdict",
        data_bin / "dict.tgt.txt",
        "--destdir",
        empty_bin,
        "--workers",
        1,
    )
    train(data_bin, tmp_path / "ckpt", "--max-update", 1)
    line = _one_error_line(generate(empty_bin, tmp_path / "ckpt" / "checkpoint_last.pt", check=False))
    assert f"{empty_bin}: split 'test' (src-tgt) has no examples" in line


def test_checkpoint_of_another_vocabulary_names_both_sizes(data_bin, text_corpus, tmp_path):
    train(data_bin, tmp_path / "ckpt", "--max-update", 1)
    other = tmp_path / "other"
    run_cli(
        "fairseq_cli.preprocess",
        "-s",
        "src",
        "-t",
        "tgt",
        "--trainpref",
        text_corpus / "train",
        "--testpref",
        text_corpus / "test",
        "--joined-dictionary",
        "--nwordssrc",
        "100",
        "--destdir",
        other,
        "--workers",
        1,
    )
    line = _one_error_line(generate(other, tmp_path / "ckpt" / "checkpoint_last.pt", check=False))
    assert "symbols) does not fit HashEEBARTModel" in line
    assert "104 symbols" in line


def test_unknown_exit_implementation_is_refused(data_bin, tmp_path):
    proc = train(data_bin, tmp_path, "--exit-impl", "fast", check=False)
    assert proc.returncode != 0 and "argument --exit-impl: invalid choice: 'fast'" in proc.stderr


@pytest.fixture(scope="module")
def unloadable_checkpoints(data_bin, tmp_path_factory):
    """A checkpoint cut in half (a copy interrupted, a disk full) and a text file given as one."""
    root = tmp_path_factory.mktemp("unloadable")
    train(data_bin, root, "--max-update", 1, "--no-epoch-checkpoints")
    whole = (root / "checkpoint_last.pt").read_bytes()
    (root / "truncated.pt").write_bytes(whole[: len(whole) // 2])
    (root / "notes.pt").write_text("gpu hours: 12\nloss: 3.2\n")  # 'g' is pickle's opcode 103
    return root


def _fairseq_command(tool, data_bin, checkpoint):
    options = ["--path", checkpoint, "--user-dir", USER_DIR, "--task", "hashee_summarization", "-s", "src", "-t", "tgt"]
    return run_cli(tool, data_bin, *options, "--cpu", check=False)


@pytest.mark.parametrize("name", ["truncated.pt", "notes.pt"])
def test_an_unloadable_checkpoint_gets_the_same_line_from_every_command(
    unloadable_checkpoints, data_bin, tmp_path, name
):
    """fairseq's commands load checkpoints through their own torch.load: the plugin names the file
    as hashee-calibrate and hashee-compare do, never with torch's advice to turn weights_only off."""
    checkpoint = unloadable_checkpoints / name
    with pytest.raises(HashEEError) as ours:
        load_checkpoint(str(checkpoint))
    expected = f"error: {ours.value}"
    assert str(ours.value).startswith(f"{checkpoint}: cannot be loaded as a fairseq checkpoint (")
    for tool in ("fairseq_cli.generate", "fairseq_cli.interactive"):
        proc = _fairseq_command(tool, data_bin, checkpoint)
        assert _one_error_line(proc) == expected, tool
        assert "weights_only" not in proc.stderr, tool
    proc = run_cli("fairseq_hashee.cli.calibrate", checkpoint, data_bin, check=False)
    assert _one_error_line(proc) == expected
    proc = train(data_bin, tmp_path / "resumed", "--restore-file", checkpoint, "--max-update", 1, check=False)
    assert _one_error_line(proc) == expected
    assert not list((tmp_path / "resumed").glob("*.pt"))


def test_a_missing_checkpoint_is_named_by_every_command(data_bin, tmp_path):
    """fairseq-generate's own message is a traceback, and fairseq-train skips a --restore-file that
    is not there and trains from random weights: both get one line, and training writes nothing."""
    checkpoint = tmp_path / "bart.large" / "model.pt"
    for tool in ("fairseq_cli.generate", "fairseq_cli.interactive"):
        proc = _fairseq_command(tool, data_bin, checkpoint)
        assert _one_error_line(proc) == f"error: {checkpoint}: no such checkpoint file", tool
    proc = train(data_bin, tmp_path / "tuned", "--restore-file", checkpoint, "--max-update", 1, check=False)
    assert _one_error_line(proc) == f"error: --restore-file {checkpoint}: no such checkpoint file"
    assert not list((tmp_path / "tuned").glob("*.pt"))


def test_sample_data_into_an_existing_file(tmp_path):
    out = tmp_path / "corpus"
    out.write_text("keep me\n")
    proc = run_cli("fairseq_hashee.cli.sample_data", out, check=False)
    assert f"{out}: exists and is not a folder" in _one_error_line(proc)
    assert out.read_text() == "keep me\n"
    # ... and any command writing below a file: one line, the file untouched
    with pytest.raises(HashEEError, match="^" + re.escape(f"{out}: not a folder (a file is in the way)")):
        with atomic_write(str(out / "train.src")):
            pass
    assert out.read_text() == "keep me\n"
