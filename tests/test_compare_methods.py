"""hashee-compare's methods: which training runs and generation options each row gets."""

import argparse
import re

import pytest
import torch

from fairseq_hashee.calibration.ltt import calibrate
from fairseq_hashee.compare import runs
from fairseq_hashee.compare.calibrated import Decision, add_rows, candidates, settings
from fairseq_hashee.compare.methods import (
    COMBINED_PARTS,
    DEFAULT_METHOD_KEYS,
    Point,
    build_methods,
    check_generate_options,
    select_methods,
    sweep_points,
)
from fairseq_hashee.errors import HashEEError

METHODS = build_methods(4, 4)


def test_a_generation_knob_shares_one_trained_model():
    points = sweep_points(METHODS["calm"])
    assert [p.label for p in points] == [f"CALM (softmax), threshold {v}" for v in ("0.9", "0.8", "0.6")]
    assert {p.stages for p in points} == {METHODS["calm"].stages}
    # CALM's decaying threshold (tau 4), as the paper ran CNN/DM
    assert points[0].generate_options == ["--exit-threshold-decay", "4", "--exit-threshold", "0.9"]


def test_a_trained_knob_trains_one_run_per_value_from_the_shared_backbone():
    points = sweep_points(METHODS["consistentee"], ["2", "5"])
    assert [p.label for p in points] == ["ConsistentEE, alpha 2", "ConsistentEE, alpha 5"]
    for point, value in zip(points, ("2", "5")):
        backbone, policy, joint = point.stages
        assert backbone.name == "multi-exit" and policy.start == "multi-exit" and policy.frozen
        assert policy.name == f"consistentee-{value}"
        assert policy.options[-2:] == ("--consistentee-alpha", value)
        # stage 3 (the whole model at the policies' exits) from this value's policies, with the same reward
        assert joint.name == f"consistentee-joint-{value}" and joint.start == policy.name and joint.frozen
        assert "consistentee_joint" in joint.options and joint.options[-2:] == ("--consistentee-alpha", value)
        assert point.generate_options == []


def test_hashee_buckets_are_swept_only_on_request():
    (default,) = sweep_points(METHODS["hashee-encdec"])
    assert default.label == "HashEE, encoder+decoder exits" and default.stages[-1].name == "hashee-encdec"
    assert "--decoder-exit-max" not in default.stages[-1].options
    (fast,) = sweep_points(METHODS["hashee-encdec"], ["2"])
    assert fast.label == "HashEE, encoder+decoder exits, deepest decoder exit 2"
    assert fast.stages[-1].name == "hashee-encdec-2" and fast.stages[-1].options[-2:] == ("--decoder-exit-max", "2")


def test_the_difficulty_table_is_measured_by_the_shared_multi_exit_stage():
    points = sweep_points(METHODS["hashee-difficulty"])
    assert [p.value for p in points] == ["3", "2.5", "2"]  # 3/4, 5/8 and half of the decoder's 4 layers
    assert points[0].label == "HashEE, encoder exits + difficulty decoder table, mean decoder exit 3"
    for point in points:
        backbone, hashee = point.stages
        assert backbone == METHODS["calm"].stages[0]  # the run CALM and ConsistentEE share
        assert hashee.name == f"hashee-difficulty-{point.value}" and hashee.start == "multi-exit"
        assert hashee.reads == (("--difficulty-from", "multi-exit"), ("--distill-from", "start"))
        assert hashee.fresh_tables and "--decoder-exits" in hashee.options and "hashee_distill" in hashee.options
        assert hashee.options[-2:] == ("--difficulty-mean-exit", point.value) and point.generate_options == []
    assert [p.value for p in candidates(METHODS["hashee-difficulty"], points[::-1])] == ["3", "2.5", "2"]


def test_a_stage_gets_the_checkpoint_its_table_is_measured_by(tmp_path, monkeypatch):
    trained = []

    def train(data, save_dir, start, options, updates, threads=None, say=None):
        trained.append((save_dir.name, str(start), tuple(options)))
        save_dir.mkdir(parents=True, exist_ok=True)
        tables = {"encoder.exit_table": torch.full((5,), 4), "decoder.exit_table": torch.full((5,), 4)}
        torch.save({"model": {"decoder.embed_tokens.weight": torch.zeros(5, 2), **tables}}, save_dir / "best.pt")
        return save_dir / "best.pt"

    monkeypatch.setattr(runs, "train_stage", train)
    monkeypatch.setattr(runs, "stage_finished", lambda *args: False)
    (point,) = sweep_points(METHODS["hashee-difficulty"], ["2.5"])
    data = runs.Data("bin", "src", "tgt", "hashee_bart_base", [], [], [], ["--cpu"])
    runs.train_stages(data, tmp_path, point.stages[::-1], tmp_path / "start.pt", lambda s: 3, 1, lambda m: None)
    (first, *_), (second, start, options) = trained
    assert first == "multi-exit" and second == "hashee-difficulty-2.5"
    multi_exit = tmp_path / "train" / "multi-exit" / "best.pt"
    assert options[-4:] == ("--difficulty-from", str(multi_exit), "--distill-from", str(tmp_path / "start.pt"))
    # It starts from the multi-exit model without its tables (a restored table would win over its own).
    assert start == str(tmp_path / "train" / "hashee-difficulty-2.5" / "start.pt")
    assert set(torch.load(start)["model"]) == {"decoder.embed_tokens.weight"}
    assert set(torch.load(multi_exit)["model"]) == {
        "decoder.embed_tokens.weight",
        "encoder.exit_table",
        "decoder.exit_table",
    }


def test_combined_rows_run_the_decoder_method_under_encoder_exits():
    calm, consistentee = METHODS["hashee-enc+calm"], METHODS["hashee-enc+consistentee"]
    assert calm.label == "HashEE encoder exits + CALM (softmax)" and calm.sweep == METHODS["calm"].sweep
    assert calm.stages[0] == consistentee.stages[0]  # one multi-exit run, as CALM and ConsistentEE share theirs
    for key in COMBINED_PARTS[1:]:
        combined, alone = METHODS[f"hashee-enc+{key}"], METHODS[key]
        assert (combined.knob, combined.sweep, combined.knob_range) == (alone.knob, alone.sweep, alone.knob_range)
        for ours, theirs in zip(combined.stages, alone.stages):
            assert ours.name == f"enc+{theirs.name}" and ours.start in ("start", f"enc+{theirs.start}")
            # The same stage but for the option that keeps the encoder at full depth.
            assert theirs.options == ("--encoder-exit-layers", "4") + ours.options
            assert (ours.frozen, ours.takes_knob) == (theirs.frozen, theirs.takes_knob)
    (static,) = METHODS["hashee-enc+static-dec"].stages
    assert static.options[:2] == ("--decoder-layers", "2") and "--encoder-layers" not in static.options
    assert "--encoder-exit-layers" not in static.options
    (alpha,) = sweep_points(consistentee, ["5"])
    assert [s.name for s in alpha.stages] == ["enc+multi-exit", "enc+consistentee-5", "enc+consistentee-joint-5"]
    assert not any("+" in key for key in DEFAULT_METHOD_KEYS)


@pytest.mark.parametrize(
    "key, message",
    [
        (
            "hashee-enc+medusa",
            "--methods: hashee-enc+medusa: unknown decoder part 'medusa'; expected one of static-dec",
        ),
        ("calm-enc+calm", "--methods: calm-enc+calm: unknown encoder part 'calm-enc'"),
        ("hashee-enc+", "unknown decoder part ''"),
    ],
)
def test_a_combined_method_with_an_unknown_part_is_refused(key, message):
    with pytest.raises(HashEEError, match=re.escape(message)):
        select_methods(METHODS, ["full", key])


def test_static_depth_trains_one_run_per_decoder_depth():
    (half,) = sweep_points(METHODS["static-half"])
    assert half.label == "static half depth" and half.stages[-1].name == "static-half"
    assert half.stages[-1].options[:4] == ("--encoder-layers", "2", "--decoder-layers", "2")
    three, one = sweep_points(METHODS["static-half"], ["3", "1"])
    assert three.label == "static half depth, decoder layers 3" and three.stages[-1].name == "static-half-3"
    # the knob's value comes last, so fairseq-train keeps it over the half depth before it
    assert three.stages[-1].options[-2:] == ("--decoder-layers", "3") and three.generate_options == []
    with pytest.raises(
        HashEEError, match=re.escape("--sweep static-half: --decoder-layers '5' is not an integer in 1..4")
    ):
        sweep_points(METHODS["static-half"], ["5"])


def test_patience_stays_below_the_decoder_depth():
    assert build_methods(4, 3)["leco"].sweep == ("1", "0")
    assert set(build_methods(4, 1)) == {"full", "hashee-enc"}


@pytest.mark.parametrize(
    "method, values, message",
    [
        ("full", ["1"], "full has no knob to sweep"),
        ("calm", [], "no values for calm"),
        ("calm", ["0.9", "abc"], "--sweep calm: --exit-threshold 'abc' is not a number in 0.0..1.0"),
        ("dat", ["1.5"], "--sweep dat: --exit-threshold '1.5' is not a number in 0.0..1.0"),
        ("consistentee", ["-1"], "--sweep consistentee: --consistentee-alpha '-1' is not a number >= 0.0"),
        ("leco", ["3"], "--sweep leco: --exit-patience '3' is not an integer in 0..2"),
        ("leco", ["1.0"], "--sweep leco: --exit-patience '1.0' is not an integer in 0..2"),
        ("hashee-encdec", ["0"], "--sweep hashee-encdec: --decoder-exit-max '0' is not an integer in 1..4"),
        (
            "hashee-difficulty",
            ["0.5"],
            "--sweep hashee-difficulty: --difficulty-mean-exit '0.5' is not a number in 1..4",
        ),
        (
            "hashee-difficulty",
            ["4.5"],
            "--sweep hashee-difficulty: --difficulty-mean-exit '4.5' is not a number in 1..4",
        ),
        ("hashee-difficulty", ["3", "x"], "--sweep hashee-difficulty: --difficulty-mean-exit 'x' is not a number in"),
    ],
)
def test_bad_sweeps_are_refused(method, values, message):
    with pytest.raises(HashEEError, match=re.escape(message)):
        sweep_points(METHODS[method], values)


def test_full_depth_always_comes_first():
    assert [m.key for m in select_methods(METHODS, ["leco", "static-half"])] == ["full", "static-half", "leco"]
    with pytest.raises(HashEEError, match="needs a decoder of at least 2 layers"):
        select_methods(build_methods(2, 1), ["calm"])


def test_calibration_candidates_are_ordered_safest_first():
    assert [p.value for p in candidates(METHODS["calm"], [])][:3] == ["1", "0.9", "0.8"]
    assert len(candidates(METHODS["calm"], [])) == 11 and candidates(METHODS["calm"], [])[-1].value == "0"
    assert [p.value for p in candidates(METHODS["calm"], [], ["0.6", "0.3"])] == ["0.6", "0.3"]
    assert [p.value for p in candidates(METHODS["leco"], [])] == ["2", "1", "0"]
    alphas = sweep_points(METHODS["consistentee"], ["10", "2", "5"])
    assert [p.value for p in candidates(METHODS["consistentee"], alphas)] == ["2", "5", "10"]  # least depth cost first
    buckets = [Point(METHODS["hashee-encdec"], "2"), Point(METHODS["hashee-encdec"])]
    assert [p.value for p in candidates(METHODS["hashee-encdec"], buckets)] == [None, "2"]  # every layer first
    # static depth's row without a value keeps half the decoder (2 of 4): between 3 and 1 layers
    depths = [Point(METHODS["static-half"], "1"), Point(METHODS["static-half"]), Point(METHODS["static-half"], "3")]
    assert [p.value for p in candidates(METHODS["static-half"], depths)] == ["3", None, "1"]


def test_a_certified_value_marks_its_row_or_adds_one():
    points = [Point(METHODS["full"]), Point(METHODS["static-half"], "3"), Point(METHODS["calm"], "0.9")]
    static = Decision(METHODS["static-half"], points[1:2], calibrate(["3"], [[0.0] * 30], 0.5, 0.1))
    calm_tested = [Point(METHODS["calm"], "1"), Point(METHODS["calm"], "0.5")]
    calm = Decision(METHODS["calm"], calm_tested, calibrate(["1", "0.5"], [[0.0] * 30] * 2, 0.5, 0.1))
    assert static.point == points[1] and calm.point == Point(METHODS["calm"], "0.5")
    add_rows([static, calm], points)
    # the static row is the comparison's own (no second copy); CALM's certified threshold is a row of its own
    assert [p.label for p in points] == [
        "full depth",
        "static half depth, decoder layers 3",
        "CALM (softmax), threshold 0.9",
        "CALM (softmax), threshold 0.5",
    ]


def _calibrate_args(calibrate, *grids, subset=None):
    return argparse.Namespace(
        calibrate=calibrate,
        calibrate_grid=list(grids),
        calibrate_loss="risk",
        calibrate_metric="rougeL",
        calibrate_p_value="wsr",
        calibration_subset=subset,
    )


@pytest.mark.parametrize(
    "calibrate, grids, message",
    [
        ("1.5", [], "--calibrate delta: must be strictly between 0 and 1, got 1.5"),
        ("0.1,0", [], "--calibrate epsilon: must be strictly between 0 and 1, got 0.0"),
        ("0.1,0.1,0.1", [], "--calibrate: expected DELTA or DELTA,EPSILON"),
        (None, ["calm=0.5"], "--calibrate-grid: only with --calibrate"),
        ("0.1", ["calm=abc"], "--calibrate-grid calm: --exit-threshold 'abc' is not a number in 0.0..1.0"),
        ("0.1", ["dat=0.5"], "--calibrate-grid 'dat=0.5': expected METHOD=V1,V2 with a method among --methods"),
        ("0.1", ["consistentee=2"], "--calibrate-grid: consistentee has no generation knob"),
    ],
)
def test_calibrate_options_are_checked_before_the_data(tmp_path, calibrate, grids, message):
    methods = [METHODS[key] for key in ("full", "calm", "consistentee")]
    with pytest.raises(HashEEError, match="^" + re.escape(message)):
        settings(_calibrate_args(calibrate, *grids), tmp_path, ("src", "tgt"), methods)
    assert settings(_calibrate_args(None), tmp_path, ("src", "tgt"), methods) is None


def test_a_missing_calibration_split_is_refused(tmp_path):
    methods = [METHODS[key] for key in ("full", "calm")]
    for subset, name in ((None, "valid"), ("calib", "calib")):  # no calib split: valid is the default
        message = f"--calibration-subset: {tmp_path / f'{name}.src-tgt.src.idx'} missing"
        with pytest.raises(HashEEError, match="^" + re.escape(message)):
            settings(_calibrate_args("0.1", subset=subset), tmp_path, ("src", "tgt"), methods)


def test_dat_trains_as_its_paper_on_its_own_uniformly_weighted_backbone():
    """DAT's aligned training weighs the exits alike (the alpha-0 phase), then the decoder and the halting
    classifiers train together on the correctness oracle; CALM's backbone weighs layer i by i."""
    backbone, joint = METHODS["dat"].stages
    assert backbone.name == "dat-backbone" and backbone.start == "start" and not backbone.frozen
    assert backbone.options[-2:] == ("--exit-loss-weights", "uniform")
    assert "--decoder-exit-rule" not in backbone.options
    assert joint.name == "dat-joint" and joint.start == "dat-backbone" and joint.frozen
    assert _option(joint, "--criterion") == "dat_joint" and _option(joint, "--dat-oracle") == "correctness"
    assert _option(joint, "--decoder-exit-rule") == "dat-halting" and "--dat-oracle-smoothing" not in joint.options
    assert (
        METHODS["calm"].stages[0].name == "multi-exit"
        and "--exit-loss-weights" not in METHODS["calm"].stages[0].options
    )
    assert sweep_points(METHODS["dat"])[0].generate_options == ["--exit-threshold", "0.7"]


def _option(stage, name):
    return stage.options[stage.options.index(name) + 1]


def test_calm_rows_are_trained_and_decoded_as_its_authors_ran_them():
    """CALM's backbone without label smoothing (t5x's), which ConsistentEE shares; DAT's and LECO's keep
    fairseq's 0.1. Its classifier measure is its own row: the classifier trained on the frozen backbone,
    both rows with the decaying threshold."""
    (backbone,) = METHODS["calm"].stages
    assert _option(backbone, "--label-smoothing") == "0" and _option(backbone, "--exit-confidence") == "softmax"
    assert METHODS["consistentee"].stages[0] == backbone
    assert _option(METHODS["dat"].stages[0], "--label-smoothing") == "0.1"
    assert _option(METHODS["leco"].stages[-1], "--label-smoothing") == "0.1"
    shared, classifier = METHODS["calm-classifier"].stages
    assert shared == backbone and classifier.start == "multi-exit" and classifier.frozen
    assert _option(classifier, "--criterion") == "calm_exit_classifier"
    assert _option(classifier, "--exit-confidence") == "classifier"
    points = sweep_points(METHODS["calm-classifier"])
    assert [p.label for p in points] == [f"CALM (classifier), threshold {v}" for v in ("0.9", "0.8", "0.6")]
    assert points[-1].generate_options == ["--exit-threshold-decay", "4", "--exit-threshold", "0.6"]
    assert list(METHODS).index("calm-classifier") == list(METHODS).index("calm") + 1


@pytest.mark.parametrize(
    "generate, refused",
    [
        (["--max-len-b", "48"], False),
        (["--max-len-a", "0", "--max-len-b", "48"], False),
        (["--max-len-a", "1.2", "--max-len-b", "48"], True),
        (["--max-len-a", "1.2", "--exit-threshold-decay-length", "64"], False),
    ],
)
def test_the_decaying_threshold_needs_a_fixed_length(generate, refused):
    calm = sweep_points(METHODS["calm"], ["0.9"])
    if not refused:
        check_generate_options(calm, generate)
        return
    message = "--generate-args: --max-len-a 1.2: calm@0.9 decays its threshold over the generation's length"
    with pytest.raises(HashEEError, match="^" + re.escape(message)):
        check_generate_options(calm, generate)
    check_generate_options(sweep_points(METHODS["dat"]), generate)  # no decaying threshold: nothing to check


def test_free_trains_its_own_shallow_deep_decoder_and_sweeps_its_threshold_at_generation():
    (stage,) = METHODS["free"].stages
    assert stage.start == "start" and not stage.frozen and stage.name == "free"
    assert "--decoder-exit-rule" in stage.options and "free_shallow_deep" in stage.options
    points = sweep_points(METHODS["free"])
    assert [p.value for p in points] == ["0.9", "0.7", "0.5"]  # the released 0.9 and lower
    assert {p.stages for p in points} == {METHODS["free"].stages}  # one model, the threshold at generation
    assert points[0].generate_options == ["--exit-threshold", "0.9"]
    assert [p.value for p in candidates(METHODS["free"], [])][:2] == ["1", "0.9"]
