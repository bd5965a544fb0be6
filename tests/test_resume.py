"""A run killed mid-epoch and resumed from checkpoint_last continues the uninterrupted run.

fairseq seeds every update with seed + update number and stores the position
in the epoch with each checkpoint, so a resumed run must see the same batches
and dropout masks; the tables come from the checkpoint, so they must not move.
"""

import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from helpers import USER_DIR

pytestmark = pytest.mark.slow

MAX_UPDATE, SAVE_EVERY = 14, 5
COMMAND = [
    "--user-dir",
    USER_DIR,
    "--task",
    "hashee_summarization",
    "-s",
    "src",
    "-t",
    "tgt",
    "--arch",
    "hashee_bart_base",
    "--encoder-layers",
    2,
    "--decoder-layers",
    2,
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
    "--skip-invalid-size-inputs-valid-test",
    "--encoder-hash-type",
    "random",
    "--decoder-exits",
    "--decoder-hash-type",
    "frequency",
    "--criterion",
    "label_smoothed_cross_entropy",
    "--label-smoothing",
    0.1,
    "--dropout",
    0.1,
    "--optimizer",
    "adam",
    "--lr",
    3e-3,
    "--lr-scheduler",
    "inverse_sqrt",
    "--warmup-updates",
    5,
    # small batches: an epoch is longer than SAVE_EVERY updates, so the kill lands mid-epoch
    "--max-tokens",
    400,
    "--required-batch-size-multiple",
    1,
    "--cpu",
    "--num-workers",
    0,
    "--seed",
    7,
    "--max-update",
    MAX_UPDATE,
    "--save-interval-updates",
    SAVE_EVERY,
    "--no-epoch-checkpoints",
    "--log-format",
    "json",
    "--log-interval",
    1,
]


def _train_command(data_bin, save_dir):
    return [sys.executable, "-m", "fairseq_cli.train", str(data_bin), "--save-dir", str(save_dir), *map(str, COMMAND)]


def _losses(output):
    """{update number: training loss} from fairseq's json log."""
    losses = {}
    for line in output.splitlines():
        match = re.search(r"\| train_inner \| (\{.*\})", line)
        if match:
            record = json.loads(match.group(1))
            losses[int(record["num_updates"])] = float(record["loss"])
    return losses


def _kill_after_first_save(data_bin, save_dir):
    """Start training and SIGKILL it as soon as it reports its first saved checkpoint."""
    proc = subprocess.Popen(
        _train_command(data_bin, save_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    output = []
    for line in proc.stdout:
        output.append(line)
        if "Saved checkpoint" in line:  # logged once checkpoint_last.pt is written too
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    return "".join(output)


def test_killed_run_resumes_like_an_uninterrupted_one(data_bin, tmp_path):
    straight = subprocess.run(
        _train_command(data_bin, tmp_path / "straight"), capture_output=True, text=True, timeout=600
    )
    assert straight.returncode == 0, straight.stderr[-3000:]
    reference = _losses(straight.stdout + straight.stderr)
    assert sorted(reference) == list(range(1, MAX_UPDATE + 1))

    first = _kill_after_first_save(data_bin, tmp_path / "killed")
    saved = torch.load(tmp_path / "killed" / "checkpoint_last.pt", weights_only=False)
    done = saved["optimizer_history"][-1]["num_updates"]
    assert SAVE_EVERY <= done < MAX_UPDATE
    epoch_position = saved["extra_state"]["train_iterator"]
    assert epoch_position["iterations_in_epoch"] > 0, "the kill should land mid-epoch"

    resumed = subprocess.run(_train_command(data_bin, tmp_path / "killed"), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "loaded checkpoint" in (resumed.stdout + resumed.stderr).lower()
    continued = _losses(resumed.stdout + resumed.stderr)
    assert sorted(continued) == list(range(done + 1, MAX_UPDATE + 1))
    before_kill = _losses(first)
    for update in range(1, MAX_UPDATE + 1):
        loss = continued.get(update, before_kill.get(update))
        assert loss == pytest.approx(reference[update], abs=1e-3), update

    final = torch.load(tmp_path / "killed" / "checkpoint_last.pt", weights_only=False)["model"]
    expected = torch.load(tmp_path / "straight" / "checkpoint_last.pt", weights_only=False)["model"]
    for key in ("encoder.exit_table", "decoder.exit_table"):
        assert torch.equal(final[key], saved["model"][key]) and torch.equal(final[key], expected[key])
    for key in expected:
        assert torch.allclose(final[key].float(), expected[key].float(), atol=1e-4), key
