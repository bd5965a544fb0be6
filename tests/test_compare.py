"""hashee-compare end to end on the tests' tiny corpus: table, JSON, plot, resuming, refusals."""

import json

import pytest
import torch
from test_cli import MODEL, _one_error_line

from fairseq_hashee.compare import report

from helpers import run_cli

pytestmark = pytest.mark.slow

TINY = " ".join(map(str, MODEL))
TRAIN = (
    "--optimizer adam --lr 3e-3 --lr-scheduler inverse_sqrt --warmup-updates 5 --max-tokens 2048 --dropout 0 "
    "--num-workers 0 --skip-invalid-size-inputs-valid-test"
)
GENERATE = "--beam 2 --max-len-b 12 --batch-size 16"
METHODS = "full,static-half,hashee-encdec,calm,leco"
ROWS = [
    "full depth",
    "static half depth",
    "HashEE, encoder+decoder exits",
    "CALM (softmax), threshold 0.5",
    "LECO heads + agreement, patience 0",
]


def compare(data_bin, work, *extra, check=True):
    return run_cli(
        "fairseq_hashee.cli.compare",
        data_bin,
        "--work-dir",
        work,
        "--model-args",
        TINY,
        "--train-args",
        TRAIN,
        "--generate-args",
        GENERATE,
        "--cpu",
        *extra,
        check=check,
    )


@pytest.fixture(scope="module")
def compared(data_bin, tmp_path_factory):
    work = tmp_path_factory.mktemp("compare")
    options = ["--methods", METHODS, "--base-updates", 8, "--max-update", 4, "--frozen-updates", 2]
    options += ["--sweep", "calm=0.5", "--sweep", "leco=0", "--timing-rounds", 1, "--jobs", 2]
    first = compare(data_bin, work, *options)
    again = compare(data_bin, work, *options)
    return work, first, again


def test_one_row_per_method_and_knob_value(compared):
    work, first, _ = compared
    summary = json.loads((work / "compare.json").read_text())
    rows = {row["label"]: row for row in summary["rows"]}
    assert list(rows) == ROWS
    full, half = rows["full depth"], rows["static half depth"]
    assert full["total_flops_x"] == 1.0 and full["wall_x"] == 1.0
    assert half["encoder_flops_x"] == 2.0 and half["decoder_flops_x"] > 1.0  # 1 of 2 layers, cut from the base
    assert rows["HashEE, encoder+decoder exits"]["encoder_mean_exit"] < 2.0
    for row in rows.values():
        assert len(row["seconds"]) == 1 and row["wall_x"] > 0
        assert abs(row["efficiency"] - row["step_x"] / row["total_flops_x"]) < 1e-9 and row["tokens"] > 0
        assert row["decoder_calls"] >= row["tokens"] / summary["test_documents"]  # the longest summary's steps
        assert 0 <= row["rouge1"] <= 100 and row["distinct"] >= 1
        assert f"\n{row['label']:<40} {row['rouge1']:6.2f}" in first.stdout
    # three test documents, each with the reference and every row's summary
    assert first.stdout.count("-- test document") == 3
    assert first.stdout.count("   reference ") == 3
    assert (work / "compare.txt").read_text().startswith("method ")


def test_wall_speedup_is_the_median_over_interleaved_rounds():
    rows = [
        {"seconds": [2.0, 4.0, 3.0], "tokens": 1000, "decoder_calls": 100, "total_flops_x": 1.0},
        # per round: 2.0, 4.0, 1.0
        {"seconds": [1.0, 1.0, 3.0], "tokens": 1500, "decoder_calls": 50, "total_flops_x": 2.0},
    ]
    report.wall_speedups(rows)
    assert rows[0]["wall_x"] == rows[0]["token_x"] == rows[0]["step_x"] == 1.0
    # twice as fast over the test split, with half again as many tokens (3x per token) in half the
    # steps of beam search (each step as fast as full depth's: 1x)
    assert rows[1]["wall_x"] == 2.0 and rows[1]["token_x"] == 3.0
    assert rows[1]["step_x"] == 1.0 and rows[1]["efficiency"] == 0.5


def test_the_frontier_plot_is_a_png(compared):
    work, _, _ = compared
    data = (work / "frontier.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_a_rerun_trains_and_generates_nothing_again(compared):
    work, first, again = compared
    assert first.stdout.count("finished before") == 0
    # full, static-half, hashee-encdec, multi-exit, leco-search and leco (the base is in start.pt)
    assert again.stdout.count("finished before") == 6
    assert again.stdout.count("generated before") == len(ROWS)


def test_methods_fine_tune_from_the_same_start(compared):
    work, _, _ = compared
    start = torch.load(work / "start.pt", map_location="cpu", weights_only=False)["model"]
    assert not [key for key in start if key.endswith("exit_table")]
    for stage in ("full", "static-half", "hashee-encdec", "multi-exit", "leco-search"):
        log = (work / "train" / stage / "train.log").read_text()
        assert f"'finetune_from_model': '{work / 'start.pt'}'" in log, stage
    log = (work / "train" / "leco" / "train.log").read_text()
    assert f"'finetune_from_model': '{work / 'train' / 'leco-search' / 'checkpoint_best.pt'}'" in log


@pytest.mark.parametrize(
    "options, message",
    [
        (["--methods", "full,medusa"], "--methods: unknown method 'medusa'"),
        (["--sweep", "full=0.5"], "--sweep: full has no knob to sweep"),
        (["--sweep", "calm=abc"], "--sweep calm: --exit-threshold 'abc' is not a number in 0.0..1.0"),
        (["--calibrate", "0.1,abc"], "--calibrate: expected DELTA or DELTA,EPSILON (numbers in (0, 1)), got '0.1,abc'"),
        (["--max-update", 0], "--max-update: must be at least 1"),
        (
            ["--model-args", "--encoder-layers 2 --no-such-option 3"],
            "--model-args: --no-such-option 3 is not an option",
        ),
    ],
)
def test_bad_options_are_refused_in_one_line(data_bin, tmp_path, options, message):
    proc = compare(data_bin, tmp_path / "work", *options, check=False)
    assert message in _one_error_line(proc)
    assert not (tmp_path / "work" / "train").exists()


def test_missing_data_is_refused_in_one_line(tmp_path):
    (tmp_path / "data").mkdir()
    proc = compare(tmp_path / "data", tmp_path / "work", check=False)
    assert f"{tmp_path / 'data'}: pass --source-lang/--target-lang (no test split found)" in _one_error_line(proc)


def test_a_checkpoint_of_another_architecture_is_refused(compared, data_bin, tmp_path):
    work, _, _ = compared
    base = work / "train" / "base" / "checkpoint_best.pt"
    deeper = compare(
        data_bin, tmp_path / "w1", "--restore-file", base, "--model-args", TINY + " --encoder-layers 3", check=False
    )
    assert "is not the 3+2-layer model --arch hashee_bart_base" in _one_error_line(deeper)

    state = torch.load(base, map_location="cpu", weights_only=False)
    state["model"]["encoder.embed_token_types.weight"] = torch.zeros(2, 32)
    torch.save(state, tmp_path / "cpt.pt")
    cpt = compare(data_bin, tmp_path / "w2", "--restore-file", tmp_path / "cpt.pt", check=False)
    assert "is a CPT checkpoint; --arch hashee_bart_base cannot load it" in _one_error_line(cpt)

    state = torch.load(base, map_location="cpu", weights_only=False)
    rows = state["model"]["decoder.embed_tokens.weight"].size(0)
    state["model"]["decoder.embed_tokens.weight"] = state["model"]["decoder.embed_tokens.weight"][:-1]
    torch.save(state, tmp_path / "short.pt")
    short = compare(data_bin, tmp_path / "w3", "--restore-file", tmp_path / "short.pt", check=False)
    expected = f"has {rows - 1} decoder embeddings but {data_bin / 'dict.tgt.txt'} has {rows} symbols"
    assert expected in _one_error_line(short)
    for work in ("w1", "w2", "w3"):
        assert not (tmp_path / work / "train").exists() and not (tmp_path / work / "start.pt").exists()


def test_calibrated_rows_reuse_the_trained_runs(compared, data_bin):
    """Run last in this file: it rewrites the fixture's compare.json."""
    from fairseq_hashee.calibration import ltt

    work, _, _ = compared
    options = ["--methods", METHODS, "--base-updates", 8, "--max-update", 4, "--frozen-updates", 2]
    options += ["--sweep", "calm=0.5", "--sweep", "leco=0", "--jobs", 2, "--calibrate", "0.5"]
    options += ["--calibrate-grid", "calm=0,1,0.5"]  # the default, 11 thresholds: tests/test_compare_methods.py
    options += ["--calibrate-p-value", "hb"]  # recomputable from the mean loss (WSR: tests/test_main_job.py)
    options += ["--calibrate-loss", "risk"]  # in [0, 1], as Hoeffding-Bentkus's p-value below takes it
    proc = compare(data_bin, work, *options)
    assert proc.stdout.count("finished before") == 6  # no training for calibration
    assert (
        "* at delta 0.5 (epsilon 0.1; expected risk consistency (ROUGE-L lost against the reference, clipped at 0); "
        "hb p-values on 10 valid examples), the fastest value certified per method:"
    ) in proc.stdout
    summary = json.loads((work / "compare.json").read_text())
    decisions = {d["method"]: d for d in summary["calibration"]}
    assert list(decisions) == ["static-half", "hashee-encdec", "calm", "leco"]
    # safest first, up to the first that is not certified (the rest are neither tested nor generated)
    calm = [c["value"] for c in decisions["calm"]["candidates"]]
    assert calm == ["1", "0.5", "0"][: len(calm)]
    assert sorted(p.name for p in (work / "calibrate").iterdir() if p.name.startswith("calm")) == sorted(
        f"calm-{value}" for value in calm
    )
    assert [c["value"] for c in decisions["static-half"]["candidates"]] == ["default"]
    rows = {row["label"]: row for row in summary["rows"]}
    assert len(rows) == len(summary["rows"])  # a certified row is never a second copy
    added = 0
    for decision in decisions.values():
        assert (decision["loss"], decision["metric"], decision["p_value"]) == ("risk", "rougeL", "hb")
        p_values = [c["p_value"] for c in decision["candidates"]]
        for candidate in decision["candidates"]:
            assert candidate["p_value"] == pytest.approx(ltt.hb_p_value(candidate["mean_loss"], 10, 0.5))
        chosen = ltt.fixed_sequence(p_values, 0.1)
        assert all(p <= 0.1 for p in p_values[:-1])  # testing stopped at the last one listed, or certified all
        assert decision["chosen"] == (None if chosen is None else decision["candidates"][chosen]["value"])
        marked = [row for row in rows.values() if row["method"] == decision["method"] and "calibration" in row]
        assert len(marked) == (chosen is not None)
        for row in marked:
            assert row["value"] == (None if decision["chosen"] == "default" else decision["chosen"])
            assert row["calibration"]["p_value"] == p_values[chosen] and 0 <= row["calibration"]["test_loss"] <= 1
            assert f"\n{row['label'] + ' *':<40} {row['rouge1']:6.2f}" in proc.stdout
            added += row["label"] not in ROWS  # a CALM threshold the comparison did not run: a row of its own
    assert len(rows) == len(ROWS) + added
