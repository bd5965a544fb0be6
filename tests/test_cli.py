"""fairseq-train / fairseq-generate with the plugin loaded, as a user runs them."""

import json
import os
import re
from pathlib import Path

import pytest
import torch

from helpers import USER_DIR, run_cli

pytestmark = pytest.mark.slow

LAYERS = 2
MODEL = [
    "--encoder-layers",
    LAYERS,
    "--decoder-layers",
    LAYERS,
    "--encoder-embed-dim",
    32,
    "--encoder-ffn-embed-dim",
    64,
    "--encoder-attention-heads",
    2,
    "--decoder-embed-dim",
    32,
    "--decoder-ffn-embed-dim",
    64,
    "--decoder-attention-heads",
    2,
    "--max-source-positions",
    128,
    "--max-target-positions",
    128,
]
CRITERION = ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", 0.1]
OPTIM = [
    "--optimizer",
    "adam",
    "--lr",
    3e-3,
    "--lr-scheduler",
    "inverse_sqrt",
    "--warmup-updates",
    5,
    "--max-tokens",
    2048,
    "--dropout",
    0.0,
    "--cpu",
    "--num-workers",
    0,
    "--seed",
    3,
    "--no-epoch-checkpoints",
    "--log-format",
    "json",
    "--log-interval",
    1,
    "--skip-invalid-size-inputs-valid-test",
]


def train(
    data_bin, save_dir, *extra, arch="hashee_bart_base", task="hashee_summarization", criterion=CRITERION, check=True
):
    args = [data_bin, "--save-dir", save_dir, "--arch", arch, "--task", task, "-s", "src", "-t", "tgt"]
    if task == "hashee_summarization":
        args += ["--user-dir", USER_DIR]
    return run_cli("fairseq_cli.train", *args, *MODEL, *criterion, *OPTIM, *extra, check=check)


def generate(data_bin, checkpoint, *extra, task="hashee_summarization", check=True):
    args = [
        data_bin,
        "--path",
        checkpoint,
        "--task",
        task,
        "-s",
        "src",
        "-t",
        "tgt",
        "--gen-subset",
        "test",
        "--beam",
        4,
        "--max-len-b",
        20,
        "--batch-size",
        8,
        "--cpu",
        "--skip-invalid-size-inputs-valid-test",
        # the plugin also lets torch >= 2.6 load stock fairseq checkpoints
        "--user-dir",
        USER_DIR,
    ]
    return run_cli("fairseq_cli.generate", *args, *extra, check=check)


def tables(checkpoint):
    import fairseq_hashee  # noqa: F401  (lets torch.load read fairseq checkpoints)

    state = torch.load(checkpoint, map_location="cpu")["model"]
    return state["encoder.exit_table"], state["decoder.exit_table"]


def train_losses(output):
    losses = []
    for line in output.splitlines():
        match = re.search(r"(\{.*\"train_inner\".*\}|\{\"epoch\".*\"loss\".*\})", line)
        if match and "train_inner" in line:
            losses.append(float(json.loads(match.group(1))["loss"]))
    return losses


def _one_error_line(proc):
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return errors[0]


@pytest.fixture(scope="module")
def trained(data_bin, tmp_path_factory):
    """A tiny HashEE BART with encoder and decoder exits, trained for a few updates."""
    save_dir = tmp_path_factory.mktemp("ckpt")
    proc = train(
        data_bin,
        save_dir,
        "--max-update",
        12,
        "--encoder-hash-type",
        "frequency",
        "--decoder-exits",
        "--decoder-hash-type",
        "random",
        "--hash-seed",
        5,
    )
    return save_dir, proc


def test_training_lowers_the_loss_and_reports_speedup(trained):
    save_dir, proc = trained
    output = proc.stdout + proc.stderr
    losses = train_losses(output)
    assert len(losses) >= 10, output[-2000:]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    valid = [json.loads(m) for m in re.findall(r"(\{\"epoch\".*\"valid_loss\".*\})", output)]
    assert valid and float(valid[-1]["valid_enc_speedup"]) > 1.0 and float(valid[-1]["valid_dec_speedup"]) > 1.0
    enc, dec = tables(save_dir / "checkpoint_last.pt")
    assert int(enc.min()) >= 1 and int(enc.max()) == LAYERS and (enc < LAYERS).any()
    assert (dec < LAYERS).any()


def test_resume_keeps_the_tables(trained, tmp_path):
    save_dir, _ = trained
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "checkpoint_last.pt").write_bytes((save_dir / "checkpoint_last.pt").read_bytes())
    # Other hash options on resume: the checkpoint's tables must win.
    proc = train(
        data_bin_of(save_dir),
        resumed,
        "--max-update",
        16,
        "--encoder-hash-type",
        "random",
        "--decoder-exits",
        "--decoder-hash-type",
        "frequency",
        "--hash-seed",
        9,
    )
    assert "using the checkpoint's encoder.exit_table" in proc.stdout + proc.stderr
    before, after = tables(save_dir / "checkpoint_last.pt"), tables(resumed / "checkpoint_last.pt")
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert torch.load(resumed / "checkpoint_last.pt", weights_only=False)["optimizer_history"][-1]["num_updates"] == 16


def data_bin_of(save_dir):
    return torch.load(save_dir / "checkpoint_last.pt", weights_only=False)["cfg"]["task"]["data"]


def test_generate_uses_the_checkpoint_tables_and_reports_speedup(trained, data_bin):
    save_dir, _ = trained
    proc = generate(data_bin, save_dir / "checkpoint_last.pt")
    hypotheses = [line for line in proc.stdout.splitlines() if line.startswith("H-")]
    assert len(hypotheses) == 10
    report = [line for line in proc.stderr.splitlines() if "HashEE generation speed-up" in line]
    assert len(report) == 1
    speedups = [float(x) for x in re.findall(r"(\d+\.\d+)x", report[0])]
    assert all(s > 1.0 for s in speedups), report[0]


def test_generate_matches_stock_bart(data_bin, tmp_path):
    """Every exit at L: fairseq-generate gives fairseq BART's hypotheses, beam 4."""
    hashee_dir = tmp_path / "hashee"
    train(data_bin, hashee_dir, "--max-update", 30, "--encoder-exit-layers", LAYERS)
    state = torch.load(hashee_dir / "checkpoint_last.pt", weights_only=False)
    assert int(state["model"]["encoder.exit_table"].min()) == LAYERS
    # The same weights as a stock fairseq BART checkpoint.
    for key in ("encoder.exit_table", "decoder.exit_table", "encoder.full_depth", "decoder.full_depth"):
        del state["model"][key]
    state["cfg"]["model"].arch = "bart_base"
    state["cfg"]["model"]._name = "bart_base"
    state["cfg"]["task"]["_name"] = "translation"
    state["cfg"]["common"]["user_dir"] = None
    stock = tmp_path / "stock.pt"
    torch.save(state, stock)

    # --unkpen keeps the barely trained model from answering <unk> everywhere;
    # the per-token scores of every hypothesis are compared, not just its text.
    ours = _hypotheses(generate(data_bin, hashee_dir / "checkpoint_last.pt", "--unkpen", 100).stdout)
    # fairseq's own task drops a last batch smaller than 8 (fairseq issue #5036)
    theirs = _hypotheses(
        generate(data_bin, stock, "--unkpen", 100, "--required-batch-size-multiple", 1, task="translation").stdout
    )
    assert len(ours) == 10 and ours.keys() == theirs.keys()
    for key, (text, scores) in ours.items():
        assert text == theirs[key][0]
        assert torch.allclose(scores, theirs[key][1], atol=1e-4)


def _hypotheses(stdout):
    """{sample id: (hypothesis tokens, positional scores)} from fairseq-generate's output."""
    texts, scores = {}, {}
    for line in stdout.splitlines():
        fields = line.split("\t")
        if line.startswith("H-"):
            texts[int(fields[0][2:])] = fields[2]
        elif line.startswith("P-"):
            scores[int(fields[0][2:])] = torch.tensor([float(x) for x in fields[1].split()])
    return {key: (texts[key], scores[key]) for key in texts}


def test_restore_a_stock_bart_checkpoint(data_bin, tmp_path):
    """--restore-file of fairseq's BART (as bart.base/model.pt) adds the task's tables;
    the cluster hash clusters the restored embeddings, as hashee-table does from the file."""
    stock_dir = tmp_path / "stock"
    train(data_bin, stock_dir, "--max-update", 2, arch="bart_base", task="translation")
    stock = stock_dir / "checkpoint_last.pt"
    save_dir = tmp_path / "finetune"
    proc = train(
        data_bin,
        save_dir,
        "--max-update",
        2,
        "--restore-file",
        stock,
        "--reset-optimizer",
        "--reset-dataloader",
        "--reset-meters",
        "--reset-lr-scheduler",
        "--encoder-hash-type",
        "cluster",
        "--decoder-exits",
        "--decoder-hash-type",
        "frequency",
    )
    output = proc.stdout + proc.stderr
    assert "checkpoint has no encoder.exit_table; hashing its encoder embeddings" in output
    assert "checkpoint has no decoder.exit_table; keeping the table built by the task" in output
    enc, _ = tables(save_dir / "checkpoint_last.pt")
    assert (enc < LAYERS).any()
    run_cli(
        "fairseq_hashee.cli.table",
        data_bin,
        "--stack",
        "encoder",
        "--num-layers",
        LAYERS,
        "--hash-type",
        "cluster",
        "--checkpoint",
        stock,
        "-o",
        tmp_path / "enc.table",
    )
    from fairseq.data import Dictionary

    from fairseq_hashee.tables.table_file import read_table

    symbols = Dictionary.load(str(data_bin / "dict.src.txt")).symbols
    assert torch.equal(enc, torch.from_numpy(read_table(str(tmp_path / "enc.table"), symbols, "encoder", LAYERS).table))


@pytest.mark.parametrize(
    "options, message",
    [
        (["--encoder-exit-layers", "1,5"], "--encoder-exit-layers: exit layer(s) [5] outside the stack's layers 1..2"),
        (["--decoder-exits", "--decoder-exit-min", 0], "--decoder-exit-min/max/step: exit layer(s) [0] outside"),
        (["--encoder-exit-layers", "1,x"], "--encoder-exit-layers: expected a comma-separated list of layers"),
        (["--hash-stats-subset", "nosuchsplit"], "no binarized data at"),
    ],
)
def test_bad_options_fail_before_training(data_bin, tmp_path, options, message):
    proc = train(data_bin, tmp_path, "--max-update", 1, *options, check=False)
    assert message in _one_error_line(proc)
    assert not list(tmp_path.glob("*.pt"))


def test_unknown_hash_type_is_refused(data_bin, tmp_path):
    proc = train(data_bin, tmp_path, "--encoder-hash-type", "md5", check=False)
    assert proc.returncode != 0
    assert "argument --encoder-hash-type: invalid choice: 'md5'" in proc.stderr


def test_restore_file_of_another_architecture(data_bin, tmp_path):
    other_dir = tmp_path / "transformer"
    run_cli(
        "fairseq_cli.train",
        data_bin,
        "--save-dir",
        other_dir,
        "--arch",
        "transformer",
        "--task",
        "translation",
        "-s",
        "src",
        "-t",
        "tgt",
        "--encoder-layers",
        1,
        "--decoder-layers",
        1,
        "--encoder-embed-dim",
        16,
        "--decoder-embed-dim",
        16,
        "--encoder-ffn-embed-dim",
        16,
        "--decoder-ffn-embed-dim",
        16,
        "--encoder-attention-heads",
        2,
        "--decoder-attention-heads",
        2,
        "--max-update",
        1,
        "--optimizer",
        "adam",
        "--lr",
        1e-3,
        "--max-tokens",
        2048,
        "--cpu",
        "--no-epoch-checkpoints",
    )
    restore = other_dir / "checkpoint_last.pt"
    proc = train(
        data_bin, tmp_path / "ft", "--max-update", 1, "--restore-file", restore, "--reset-optimizer", check=False
    )
    line = _one_error_line(proc)
    assert str(restore) in line and "does not fit HashEEBARTModel" in line and "1+1 layers, dim 16" in line
    assert "layernorm_embedding" in line or "shape mismatch" in line


def test_checkpoint_for_another_dictionary(trained, text_corpus, tmp_path):
    """A checkpoint's tables and embeddings sized for another dict.txt are named in the error."""
    other = tmp_path / "bin"
    run_cli(
        "fairseq_cli.preprocess",
        "--source-lang",
        "src",
        "--target-lang",
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
    save_dir, _ = trained
    proc = generate(other, save_dir / "checkpoint_last.pt", check=False)
    line = _one_error_line(proc)
    assert "encoder.exit_table is" in line and "in the checkpoint" in line


class _RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_carrying_a_callable_is_refused(trained, data_bin, tmp_path):
    save_dir, _ = trained
    state = torch.load(save_dir / "checkpoint_last.pt", weights_only=False)
    marker = tmp_path / "pwned"
    state["extra_state"]["payload"] = _RunsACommand(marker)
    evil = tmp_path / "evil.pt"
    torch.save(state, evil)
    proc = generate(data_bin, evil, check=False)
    line = _one_error_line(proc)
    assert "torch's safe loader refused it" in line and "posix.system" in line and "weights_only" not in line
    assert not marker.exists()


def test_mi_hash_builds_tables_from_both_sides(data_bin, tmp_path):
    proc = train(
        data_bin,
        tmp_path,
        "--max-update",
        1,
        "--encoder-hash-type",
        "mi",
        "--decoder-exits",
        "--decoder-hash-type",
        "mi",
    )
    assert "encoder exit table (mi)" in proc.stdout + proc.stderr
    enc, dec = tables(tmp_path / "checkpoint_last.pt")
    assert (enc < LAYERS).any() and (dec < LAYERS).any()


def test_random_incons_trains_and_generates(data_bin, tmp_path):
    """Per-occurrence draws: the checkpoint keeps draw sets, generation draws as it decodes."""
    train(
        data_bin,
        tmp_path,
        "--max-update",
        2,
        "--encoder-hash-type",
        "random-incons",
        "--decoder-exits",
        "--decoder-hash-type",
        "random-incons",
    )
    enc, dec = tables(tmp_path / "checkpoint_last.pt")
    assert int(enc.min()) == int(dec.min()) == -0b11  # draw set {1, 2}
    proc = generate(data_bin, tmp_path / "checkpoint_last.pt", "--max-len-b", 5)
    assert len([line for line in proc.stdout.splitlines() if line.startswith("H-")]) == 10
    assert "HashEE generation speed-up" in proc.stderr


def test_two_cpu_ranks_end_with_identical_tables_and_parameters(data_bin, tmp_path):
    """fairseq's own distributed training (gloo on CPU), one process per rank; the
    cluster (model weights) and mi (both data sides) tables are built on every rank."""
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for rank in range(2):
        (tmp_path / f"rank{rank}").mkdir()  # fairseq creates it on the master only
        args = [
            data_bin,
            "--save-dir",
            tmp_path / f"rank{rank}",
            "--arch",
            "hashee_bart_base",
            "--task",
            "hashee_summarization",
            "-s",
            "src",
            "-t",
            "tgt",
            "--user-dir",
            USER_DIR,
            *MODEL,
            *CRITERION,
            *OPTIM,
            "--max-update",
            4,
            "--encoder-hash-type",
            "cluster",
            "--hash-seed",
            11,
            "--decoder-exits",
            "--decoder-hash-type",
            "mi",
            "--distributed-backend",
            "gloo",
            "--distributed-init-method",
            f"tcp://127.0.0.1:{port}",
            "--distributed-world-size",
            2,
            "--distributed-rank",
            rank,
            "--distributed-no-spawn",
            "--ddp-backend",
            "legacy_ddp",
        ]
        procs.append(
            subprocess.Popen(
                [sys.executable, str(Path(__file__).parent / "distributed_rank.py"), *map(str, args)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    states = [torch.load(tmp_path / f"rank{r}" / "checkpoint_last.pt", weights_only=False) for r in range(2)]
    assert states[0]["optimizer_history"][-1]["num_updates"] == 4
    a, b = states[0]["model"], states[1]["model"]
    assert a.keys() == b.keys()
    assert (a["encoder.exit_table"] < LAYERS).any() and (a["decoder.exit_table"] < LAYERS).any()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_bf16_training_runs_on_cpu(data_bin, tmp_path):
    """--bf16 (which fairseq 0.12 would turn into --tpu): fairseq's mixed-precision
    optimizer over the exit-skipping model, on the CPU."""
    proc = train(data_bin, tmp_path, "--max-update", 4, "--bf16", "--encoder-hash-type", "frequency", "--decoder-exits")
    assert "training in bfloat16 on the usual device" in proc.stdout + proc.stderr
    losses = train_losses(proc.stdout + proc.stderr)
    assert len(losses) >= 3 and all(0 < loss < 100 for loss in losses)
    state = torch.load(tmp_path / "checkpoint_last.pt", weights_only=False)
    assert state["model"]["encoder.layers.0.fc1.weight"].dtype in (torch.bfloat16, torch.float32)
    assert (state["model"]["encoder.exit_table"] < LAYERS).any()
