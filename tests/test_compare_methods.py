"""hashee-compare's methods: which training runs and generation options each row gets."""

import pytest

from fairseq_hashee.compare.methods import build_methods, select_methods, sweep_points
from fairseq_hashee.errors import HashEEError

METHODS = build_methods(4, 4)


def test_a_generation_knob_shares_one_trained_model():
    points = sweep_points(METHODS["calm"])
    assert [p.label for p in points] == [f"CALM (softmax), threshold {v}" for v in ("0.9", "0.8", "0.6")]
    assert {p.stages for p in points} == {METHODS["calm"].stages}
    assert points[0].generate_options == ["--exit-threshold", "0.9"]


def test_a_trained_knob_trains_one_run_per_value_from_the_shared_backbone():
    points = sweep_points(METHODS["consistentee"], ["2", "5"])
    assert [p.label for p in points] == ["ConsistentEE, alpha 2", "ConsistentEE, alpha 5"]
    for point, value in zip(points, ("2", "5")):
        backbone, policy = point.stages
        assert backbone.name == "multi-exit" and policy.start == "multi-exit" and policy.frozen
        assert policy.name == f"consistentee-{value}"
        assert policy.options[-2:] == ("--consistentee-alpha", value)
        assert point.generate_options == []


def test_hashee_buckets_are_swept_only_on_request():
    (default,) = sweep_points(METHODS["hashee-encdec"])
    assert default.label == "HashEE, encoder+decoder exits" and default.stages[-1].name == "hashee-encdec"
    assert "--decoder-exit-max" not in default.stages[-1].options
    (fast,) = sweep_points(METHODS["hashee-encdec"], ["2"])
    assert fast.label == "HashEE, encoder+decoder exits, deepest decoder exit 2"
    assert fast.stages[-1].name == "hashee-encdec-2" and fast.stages[-1].options[-2:] == ("--decoder-exit-max", "2")


def test_patience_stays_below_the_decoder_depth():
    assert build_methods(4, 3)["leco"].sweep == ("1", "0")
    assert set(build_methods(4, 1)) == {"full", "hashee-enc"}


@pytest.mark.parametrize(
    "method, values, message",
    [("full", ["1"], "full has no knob to sweep"), ("calm", [], "no values for calm")],
)
def test_bad_sweeps_are_refused(method, values, message):
    with pytest.raises(HashEEError, match=message):
        sweep_points(METHODS[method], values)


def test_full_depth_always_comes_first():
    assert [m.key for m in select_methods(METHODS, ["leco", "static-half"])] == ["full", "static-half", "leco"]
    with pytest.raises(HashEEError, match="needs a decoder of at least 2 layers"):
        select_methods(build_methods(2, 1), ["calm"])


def test_dat_trains_on_its_own_uniformly_weighted_backbone():
    """DAT's aligned training weighs the exits alike; CALM's backbone weighs layer i by i."""
    backbone, halting = METHODS["dat"].stages
    assert backbone.name == "dat-backbone" and backbone.start == "start" and not backbone.frozen
    assert backbone.options[-2:] == ("--exit-loss-weights", "uniform")
    assert "--decoder-exit-rule" not in backbone.options
    assert halting.start == "dat-backbone" and halting.frozen
    assert halting.options[-2:] == ("--dat-oracle-smoothing", "1")
    assert (
        METHODS["calm"].stages[0].name == "multi-exit"
        and "--exit-loss-weights" not in METHODS["calm"].stages[0].options
    )
