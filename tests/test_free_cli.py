"""FREE through fairseq-train / fairseq-generate, as a user runs it (exits/free.py)."""

import json

import pytest
from test_cli import LAYERS, _one_error_line, generate, train
from test_exit_methods_cli import _decoder_speedup, _hypotheses

pytestmark = pytest.mark.slow

FREE = ["--decoder-exit-rule", "free"]  # 2 decoder layers: the shallow exit after layer 1


@pytest.fixture(scope="module")
def free(data_bin, tmp_path_factory):
    root = tmp_path_factory.mktemp("free")
    criterion = ["--criterion", "free_shallow_deep", "--distill-layer-alpha", 0.5]
    proc = train(data_bin, root, *FREE, "--max-update", 20, criterion=criterion)
    return root / "checkpoint_last.pt", proc


def test_the_logged_loss_is_the_depth_weighted_exits_plus_the_distillation(free):
    _, proc = free
    logged = [json.loads(line[line.index("{") :]) for line in (proc.stdout + proc.stderr).splitlines()
              if "train_inner" in line and "{" in line]  # fmt: skip
    assert logged
    for record in logged:
        shallow, deep, distill = (float(record[key]) for key in ("loss_shallow", "loss_deep", "loss_distill"))
        assert abs(float(record["loss"]) - ((1 * shallow + LAYERS * deep) / (1 + LAYERS) + 0.5 * distill)) < 0.01


def test_the_threshold_decides_at_generation(free, data_bin):
    checkpoint, _ = free
    never = generate(data_bin, checkpoint, "--exit-threshold", 1.0)
    plain = generate(data_bin, checkpoint, "--model-overrides", "{'decoder_exit_rule': 'none'}")
    assert _hypotheses(never) == _hypotheses(plain) and _hypotheses(plain)
    assert _decoder_speedup(never)[1] == float(LAYERS)
    # Threshold 0: every position leaves at the shallow exit; their deep layers run only where a
    # hypothesis goes deep again (here never), so the decoder saves its top layer.
    eager = generate(data_bin, checkpoint, "--exit-threshold", 0.0)
    speedup, mean_exit = _decoder_speedup(eager)
    assert mean_exit == 1.0 and speedup > 1.0
    adaptive = generate(data_bin, checkpoint, "--exit-threshold", 0.5, "--use-adapt-threshold", "--batch-size", 2)
    assert _hypotheses(adaptive)


def test_an_adaptive_threshold_needs_the_free_rule(data_bin, tmp_path_factory):
    root = tmp_path_factory.mktemp("nofree")
    train(data_bin, root, "--max-update", 1)
    proc = generate(data_bin, root / "checkpoint_last.pt", "--use-adapt-threshold", check=False)
    assert "--use-adapt-threshold: the model has no dynamic exit rule" in _one_error_line(proc)
