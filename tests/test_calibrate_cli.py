"""hashee-calibrate end to end on a tiny model with CALM's softmax rule: choice, p-values, refusals."""

import argparse
import json
import re

import pytest
import torch
from test_cli import _one_error_line, train

from fairseq_hashee.calibration import ltt
from fairseq_hashee.calibration.split import first_examples
from fairseq_hashee.cli.calibrate import parse_args, run
from fairseq_hashee.compare.calibrated import Settings, settings
from fairseq_hashee.compare.methods import build_methods
from fairseq_hashee.errors import HashEEError

from helpers import run_cli

pytestmark = pytest.mark.slow

MULTI_EXIT = ["--criterion", "multi_exit_label_smoothed_cross_entropy", "--label-smoothing", 0.1]
GENERATE = "--beam 1 --max-len-b 10 --batch-size 16 --skip-invalid-size-inputs-valid-test"


@pytest.fixture(scope="module")
def softmax_model(data_bin, tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrate")
    rule = ["--decoder-exit-rule", "confidence", "--exit-confidence", "softmax"]
    train(data_bin, root, *rule, "--max-update", 10, criterion=MULTI_EXIT)
    return root / "checkpoint_last.pt"


def calibrate(checkpoint, data, *extra, check=True):
    options = ["--generate-args", GENERATE, "--cpu"]
    return run_cli("fairseq_hashee.cli.calibrate", checkpoint, data, *options, *extra, check=check)


def test_chooses_the_last_certified_threshold(softmax_model, data_bin, tmp_path):
    out = tmp_path / "calibration.json"
    proc = calibrate(softmax_model, data_bin, "--grid", "0,1,0.5", "--max-examples", 6, "--delta", 0.5,
                     "--p-value", "hb", "--json", out, "--work-dir", tmp_path / "work")  # fmt: skip
    summary = json.loads(out.read_text())
    assert summary["examples"] == 6 and summary["option"] == "--exit-threshold" and summary["subset"] == "valid"
    assert (summary["loss"], summary["metric"], summary["p_value"]) == ("textual", "rougeL", "hb")
    candidates = summary["candidates"]
    assert [c["value"] for c in candidates] == ["1", "0.5", "0"]  # safest first
    # threshold 1 never exits before the top layer: full depth's summaries, no loss, p = 0.5^6 < 0.1
    assert candidates[0]["mean_loss"] == 0.0 and candidates[0]["decoder_flops_x"] <= 1.0
    for candidate in candidates:
        assert candidate["p_value"] == pytest.approx(ltt.hb_p_value(candidate["mean_loss"], 6, 0.5))
    chosen = ltt.fixed_sequence([c["p_value"] for c in candidates], 0.1)
    assert chosen is not None and summary["chosen"] == candidates[chosen]["value"]
    assert [c["certified"] for c in candidates] == [i <= chosen for i in range(3)]
    assert summary["generate_options"] == ["--exit-threshold", summary["chosen"]]
    assert f"fairseq-generate options: --exit-threshold {summary['chosen']}\n" in proc.stdout
    assert f"chosen: --exit-threshold {summary['chosen']} (expected textual consistency (1 - ROUGE-L" in proc.stdout
    # the calibration split's first 6 examples, generated once at full depth and once per value
    assert (tmp_path / "work" / "full" / "generate.out").read_text().count("D-") == 6
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["data", "full", "value-0", "value-0.5", "value-1"]


def test_a_users_model_overrides_reach_every_run(softmax_model, data_bin, tmp_path):
    """--model-overrides in --generate-args: the candidates take them as they are and the full-depth
    reference adds decoder_exit_rule none to them (it used to replace them)."""
    overrides = "--model-overrides \"{'exit_impl': 'masked'}\""
    calibrate(softmax_model, data_bin, "--generate-args", f"{GENERATE} {overrides}", "--grid", "1",
              "--max-examples", 2, "--work-dir", tmp_path / "work")  # fmt: skip
    logged = {
        run: re.search(r"'model_overrides': '([^']*)'", (tmp_path / "work" / run / "generate.log").read_text())
        for run in ("full", "value-1")
    }
    assert logged["full"] is not None and logged["value-1"] is not None
    assert json.loads(logged["full"].group(1)) == {"exit_impl": "masked", "decoder_exit_rule": "none"}
    assert json.loads(logged["value-1"].group(1)) == {"exit_impl": "masked"}
    # ... and overrides that set the rule, which hashee-calibrate sets itself, are refused before any run
    rule = '--model-overrides \'{"decoder_exit_rule": "none"}\''
    args = parse_args([str(softmax_model), str(data_bin), "--generate-args", rule, "--work-dir", str(tmp_path / "no")])
    with pytest.raises(HashEEError, match="^--generate-args: --model-overrides sets decoder_exit_rule, which"):
        run(args)
    assert not (tmp_path / "no").exists()


def test_bad_options_are_refused_in_one_line(softmax_model, data_bin, tmp_path):
    proc = calibrate(softmax_model, data_bin, "--work-dir", tmp_path / "work", "--delta", 1.5, check=False)
    assert "--delta: must be strictly between 0 and 1, got 1.5" in _one_error_line(proc)
    for options, message in (
        (["--epsilon", "0"], "--epsilon: must be strictly between 0 and 1, got 0"),
        (["--grid", "0.5,abc"], "--grid: --exit-threshold 'abc' is not a number in 0.0..1.0"),
        (["--subset", "nosuch"], f"--subset: {data_bin / 'nosuch.src-tgt.src.idx'} missing"),
        (["--calibration-subset", "calib"], f"--subset: {data_bin / 'calib.src-tgt.src.idx'} missing"),
        (["--loss", "drop", "--delta", "1"], "--delta: must be strictly between 0 and 1, got 1.0"),
        (["--max-examples", "0"], "--max-examples: must be at least 1, got 0"),
    ):
        args = parse_args([str(softmax_model), str(data_bin), "--work-dir", str(tmp_path / "work"), *options])
        with pytest.raises(HashEEError, match=f"^{re.escape(message)}"):
            run(args)
    assert not (tmp_path / "work").exists()


def test_a_model_without_a_knob_and_an_empty_split_are_refused(softmax_model, data_bin, tmp_path):
    state = torch.load(softmax_model, map_location="cpu", weights_only=False)
    state["cfg"]["model"].decoder_exit_rule = "none"
    torch.save(state, tmp_path / "no-rule.pt")
    proc = calibrate(tmp_path / "no-rule.pt", data_bin, check=False)
    assert "no-rule.pt: no dynamic decoder exit rule" in _one_error_line(proc)

    first_examples(data_bin, "valid", ("src", "tgt"), 0, tmp_path / "empty")
    proc = calibrate(softmax_model, tmp_path / "empty", check=False)
    assert f"--subset: valid of {tmp_path / 'empty'} has no examples to calibrate on" in _one_error_line(proc)
    # hashee-compare --calibrate checks the same before anything trains
    methods = list(build_methods(2, 2).values())
    args = argparse.Namespace(
        calibrate="0.2",
        calibrate_grid=["calm=0.2,0.9"],
        calibrate_loss="drop",
        calibrate_metric="rouge2",
        calibrate_p_value="hb",
        calibration_subset=None,
    )
    expected = Settings(0.2, 0.1, "drop", {"calm": ["0.9", "0.2"]}, "rouge2", "hb", "valid")
    assert settings(args, data_bin, ("src", "tgt"), methods) == expected
    message = f"^--calibration-subset: valid of {re.escape(str(tmp_path))}/empty has no examples to calibrate on"
    with pytest.raises(HashEEError, match=message):
        settings(args, tmp_path / "empty", ("src", "tgt"), methods)
