"""Learn-then-Test calibration: p-values by hand, fixed-sequence testing, the guarantee on synthetic
losses of known risk, the losses and the knobs."""

import argparse
import math
import re

import numpy as np
import pytest
import torch

from fairseq_hashee.calibration import knobs, ltt
from fairseq_hashee.calibration.losses import drop_losses, losses, risk_losses, textual_losses
from fairseq_hashee.cli.calibrate import overrides_option, split_model_overrides
from fairseq_hashee.errors import HashEEError


def test_hoeffding_bentkus_by_hand():
    # n = 10 examples, mean loss 0.1, delta 0.2.
    # Hoeffding: exp(-n h(0.1, 0.2)), h(a, b) = a ln(a/b) + (1-a) ln((1-a)/(1-b)), so
    #   (b/a)^(n a) ((1-b)/(1-a))^(n (1-a)) = 2^1 (0.8/0.9)^9 = 0.69288
    assert ltt.hoeffding_p_value(0.1, 10, 0.2) == pytest.approx(2 * (8 / 9) ** 9, rel=1e-12)
    assert 2 * (8 / 9) ** 9 == pytest.approx(0.69288, abs=1e-5)
    # tighter than the plain form exp(-2 n (delta - mean)^2) = exp(-0.2) = 0.81873 (Pinsker)
    assert ltt.hoeffding_p_value(0.1, 10, 0.2) < math.exp(-2 * 10 * 0.1**2)
    # Bentkus: e P(Bin(10, 0.2) <= ceil(10 * 0.1) = 1) = e (0.8^10 + 10 * 0.2 * 0.8^9) = e * 2.8 * 0.8^9 = 1.02156
    assert ltt.bentkus_p_value(0.1, 10, 0.2) == pytest.approx(math.e * 2.8 * 0.8**9, rel=1e-12)
    # the smaller one, and never above 1
    assert ltt.hb_p_value(0.1, 10, 0.2) == pytest.approx(0.69288, abs=1e-5)
    # n = 100, mean 0.05, delta 0.2: Hoeffding 4^5 (0.8/0.95)^95 = 8.32e-5; Bentkus
    # e * sum_{k<=5} C(100, k) 0.2^k 0.8^(100-k) = e * 1.868e-5 = 5.078e-5 is smaller
    hoeffding = 4**5 * (0.8 / 0.95) ** 95
    bentkus = math.e * sum(math.comb(100, k) * 0.2**k * 0.8 ** (100 - k) for k in range(6))
    assert hoeffding == pytest.approx(8.32e-5, rel=1e-3) and bentkus == pytest.approx(5.078e-5, rel=1e-3)
    assert ltt.hb_p_value(0.05, 100, 0.2) == pytest.approx(bentkus, rel=1e-9)


def test_edge_risks():
    # no loss at all: Hoeffding (1 - delta)^n, Bentkus e (1 - delta)^n
    assert ltt.hb_p_value(0.0, 20, 0.1) == pytest.approx(0.9**20, rel=1e-12)
    # a mean at or above delta is never evidence against R > delta
    assert ltt.hb_p_value(0.2, 50, 0.2) == 1.0 and ltt.hb_p_value(0.7, 50, 0.2) == 1.0
    # 30 * 0.1 is 3.0000000000000004 in floating point: the ceiling is 3, not 4
    assert ltt.bentkus_p_value(0.1, 30, 0.2) == pytest.approx(math.e * ltt.binomial_cdf(3, 30, 0.2), rel=1e-12)
    assert ltt.binomial_cdf(-1, 5, 0.3) == 0.0 and ltt.binomial_cdf(5, 5, 0.3) == 1.0
    assert ltt.binomial_cdf(2, 4, 0.5) == pytest.approx(11 / 16)  # (1 + 4 + 6) / 16


def test_fixed_sequence_stops_at_the_first_value_not_rejected():
    assert ltt.fixed_sequence([0.01, 0.05, 0.2, 0.01], 0.1) == 1  # the last value would be rejected: not tested
    assert ltt.fixed_sequence([0.5, 0.01], 0.1) is None
    assert ltt.fixed_sequence([0.1, 0.1], 0.1) == 1  # p <= epsilon rejects
    losses = [[0.0] * 40, [1.0] * 40, [0.0] * 40]
    result = ltt.calibrate(["0.9", "0.5", "0.1"], losses, delta=0.2, epsilon=0.1, p_value="hb")
    assert result.chosen == 0 and result.value == "0.9" and result.tested == 2
    assert result.risks == [0.0, 1.0, 0.0] and result.p_values[0] == pytest.approx(0.8**40)


def _bernoulli_calibrations(means, n, trials, delta, epsilon, seed=0):
    """The true risk of the value chosen on each of ``trials`` calibration sets of ``n`` examples,
    by Learn-then-Test and by the naive rule (the fastest value whose mean loss is <= delta)."""
    rng = np.random.default_rng(seed)
    chosen, naive = [], []
    for _ in range(trials):
        losses = (rng.random((len(means), n)) < np.asarray(means)[:, None]).astype(float)
        result = ltt.calibrate([str(m) for m in means], losses.tolist(), delta, epsilon, p_value="hb")
        chosen.append(0.0 if result.chosen is None else means[result.chosen])  # none: full depth, no loss
        fine = [i for i, row in enumerate(losses) if row.mean() <= delta]
        naive.append(means[max(fine)] if fine else 0.0)
    return np.asarray(chosen), np.asarray(naive)


def test_the_guarantee_holds_on_losses_of_known_risk():
    # Candidates safest first with Bernoulli losses of known mean; 0.105 is just over delta = 0.1.
    means = [0.0, 0.02, 0.05, 0.08, 0.095, 0.105, 0.15, 0.3]
    delta, epsilon, trials = 0.1, 0.1, 2000
    chosen, naive = _bernoulli_calibrations(means, n=300, trials=trials, delta=delta, epsilon=epsilon)
    violation, naive_violation = float(np.mean(chosen > delta)), float(np.mean(naive > delta))
    print(
        f"\ntrue risk of the chosen value > delta in {trials} calibration sets: Learn-then-Test {violation:.4f}, "
        f"naive (fastest mean loss <= delta) {naive_violation:.4f}"
    )
    assert violation <= epsilon
    # the check has teeth: the naive choice violates far more often, and LTT does choose fast values
    assert naive_violation > 2 * epsilon
    assert np.mean(chosen >= 0.05) > 0.5


def test_wsr_capital_by_hand():
    # losses 0.5, 0, 1, 0 (n = 4), delta 0.6, epsilon 0.9: 2 ln(1/0.9) = 0.210721.
    # running mean mu_t = (1/2 + sum L) / (t + 1): 1/2, 1/3, 1/2; variance s2_t = (1/4 + sum (L_i - mu_i)^2) / (t + 1):
    #   s2_0 = 1/4, s2_1 = (1/4 + 0) / 2 = 1/8, s2_2 = (1/4 + 1/9) / 3 = 13/108, s2_3 = (13/36 + 1/4) / 4 = 11/72
    # bets lambda_t = min(1, sqrt(2 ln(1/0.9) / (4 s2_{t-1}))): 0.459044, 0.649186, 0.661553, 0.587210
    c = 2 * math.log(1 / 0.9)
    bets = [math.sqrt(c / (4 * s2)) for s2 in (1 / 4, 1 / 8, 13 / 108, 11 / 72)]
    assert bets == pytest.approx([0.459044, 0.649186, 0.661553, 0.587210], abs=1e-6)
    # capital K_t = prod (1 - lambda_i (L_i - 0.6)): 1.045904, 1.453296, 1.068724, 1.445263
    capital = np.cumprod([1 - bet * (loss - 0.6) for bet, loss in zip(bets, (0.5, 0.0, 1.0, 0.0))])
    assert capital == pytest.approx([1.045904, 1.453296, 1.068724, 1.445263], abs=1e-5)
    assert np.exp(ltt.wsr_log_capital([0.5, 0.0, 1.0, 0.0], 0.6, 0.9)) == pytest.approx(capital, rel=1e-12)
    # p = 1 / max K = 1 / 1.453296 = 0.688091
    assert ltt.wsr_p_values([0.5, 0.0, 1.0, 0.0], 0.6, 0.9) == pytest.approx(1 / capital[1], rel=1e-12)
    # the bet is capped at 1: no loss at all, delta 0.5, epsilon 0.1, n = 6: sqrt(2 ln 10 / (6 s2)) > 1 throughout,
    # so every factor is 1 + 0.5 and p = 1.5^-6 = 0.0878 (Hoeffding-Bentkus: 0.5^6 = 0.0156 is smaller here)
    assert ltt.wsr_p_values(np.zeros(6), 0.5, 0.1) == pytest.approx(1.5**-6, rel=1e-12)
    # a capital that never rises above 1 gives p = 1; independent calibration sets along the first axis
    assert ltt.wsr_p_values(np.array([[0.9, 0.8], [0.0, 0.0]]), 0.5, 0.1).tolist() == pytest.approx([1.0, 1.5**-2])


def _at_the_boundary(shape, rng, size, delta):
    """Losses in [0, 1] whose mean is exactly ``delta`` (the null's least favourable point)."""
    if shape == "two-point 0/1":
        return (rng.random(size) < delta).astype(float)
    if shape == "two-point near delta":  # delta - 0.05 w.p. 3/4, delta + 0.15 w.p. 1/4
        return np.where(rng.random(size) < 0.75, delta - 0.05, delta + 0.15)
    if shape == "uniform":
        return delta + rng.uniform(-0.05, 0.05, size)
    if shape == "beta":
        return rng.beta(2.0, 2.0 * (1 - delta) / delta, size)
    # the drop's kind, mapped to [0, 1]: a third exactly at delta (identical summaries), the rest symmetric about it
    reach = min(0.3, delta, 1 - delta)
    spread = np.clip(rng.normal(0.0, 0.08, size), -reach, reach)
    return delta + np.where(rng.random(size) < 1 / 3, 0.0, spread)


@pytest.mark.parametrize("delta", [0.1, 0.51])  # a [0, 1] loss's budget, and a drop budget of 0.02 mapped to [0, 1]
def test_wsr_is_valid_at_the_boundary_of_the_null(delta):
    """Over 2,000 calibration sets per shape, all with mean exactly delta, p <= epsilon at most an epsilon share."""
    rng, epsilon = np.random.default_rng(0), 0.1
    shapes = ("two-point 0/1", "two-point near delta", "uniform", "beta", "spike and symmetric")
    rates = {}
    for shape in shapes:
        for n in (50, 400):
            losses = _at_the_boundary(shape, rng, (2000, n), delta)
            assert losses.min() >= 0 and losses.max() <= 1
            rates[shape, n] = float(np.mean(ltt.wsr_p_values(losses, delta, epsilon) <= epsilon))
    print(f"\nrejection rates at mean = delta = {delta}: {rates}")
    assert max(rates.values()) <= epsilon
    # the test has teeth: a tenth below delta (of the spread-out shapes), it rejects most of the time at n = 400
    below = _at_the_boundary("uniform", rng, (2000, 400), delta) - 0.01
    assert np.mean(ltt.wsr_p_values(below, delta, epsilon) <= epsilon) > 0.9


def test_wsr_certifies_a_drop_budget_that_hoeffding_bentkus_cannot():
    """The issue's figures, fewer draws: drop mean 0.004, sd 0.13, delta 0.02 (scripts/calibration_power.py)."""
    rng, draws = np.random.default_rng(1), 200
    for n, wsr_least, wsr_most in ((100, 0.0, 0.05), (1000, 0.9, 1.0)):
        drops = np.clip(0.004 + 0.13 * rng.standard_normal((draws, n)), -1, 1)
        certified = {
            kind: np.mean(
                [ltt.calibrate(["v"], [row], 0.02, 0.1, kind, (-1.0, 1.0)).chosen == 0 for row in drops.tolist()]
            )
            for kind in ltt.P_VALUES
        }
        assert wsr_least <= certified["wsr"] <= wsr_most and certified["hb"] == 0.0, (n, certified)


def test_a_loss_range_is_mapped_to_0_1_for_both_p_values():
    drops = [-0.2, 0.0, 0.1, 0.05] * 10  # mean -0.0125, n = 40, delta 0.1 -> (1 + 0.1) / 2 = 0.55
    for kind in ltt.P_VALUES:
        result = ltt.calibrate(["v"], [drops], 0.1, 0.2, kind, (-1.0, 1.0))
        assert result.risks == pytest.approx([-0.0125]) and result.p_value == kind
        scaled = (np.asarray(drops) + 1) / 2
        expected = (
            ltt.hb_p_value(float(scaled.mean()), 40, 0.55) if kind == "hb" else ltt.wsr_p_values(scaled, 0.55, 0.2)
        )
        assert result.p_values[0] == pytest.approx(float(expected), rel=1e-12)


def test_bad_levels_and_inputs_are_refused():
    for option, delta, epsilon in (("--delta", 0.0, 0.1), ("--delta", 1.0, 0.1), ("--epsilon", 0.1, 1.5)):
        with pytest.raises(HashEEError, match=f"^{option}: must be strictly between 0 and 1"):
            ltt.calibrate(["1"], [[0.0]], delta, epsilon)
    with pytest.raises(HashEEError, match="the calibration split has no examples"):
        ltt.calibrate(["1", "0.5"], [[], []], 0.1, 0.1)
    declared = r"^--p-value wsr: value 1 has a loss 1.5 outside the loss's declared range \[0, 1\]"
    with pytest.raises(HashEEError, match=declared):
        ltt.calibrate(["1"], [[0.5, 1.5]], 0.1, 0.1, p_value="wsr")
    with pytest.raises(HashEEError, match=r"^--p-value hb: value 0.5 has a loss -1.2 outside .* \[-1, 1\]"):
        ltt.calibrate(["1", "0.5"], [[0.0], [-1.2]], 0.1, 0.1, p_value="hb", loss_range=(-1.0, 1.0))
    with pytest.raises(HashEEError, match="^--p-value: expected one of hb, wsr, got 'clt'"):
        ltt.calibrate(["1"], [[0.0]], 0.1, 0.1, p_value="clt")


def test_textual_risk_and_drop_losses():
    full = ["the cat sat on the mat", "a dog", ""]
    early = ["the cat sat", "a dog", ""]
    # LCS 3 words: precision 3/3, recall 3/6, F1 2/3, loss 1/3; identical summaries (also empty ones) lose 0
    assert textual_losses(early, full) == pytest.approx([1 / 3, 0.0, 0.0])
    refs = ["the cat sat on the mat", "a big dog", "nothing here"]
    # ROUGE-L against the reference: full 1.0 vs early "the cat" F1 = 2 (1 * 1/3) / (4/3) = 0.5 -> 0.5 lost;
    # a candidate better than full depth earns no credit (clipped at 0)
    assert risk_losses(["the cat", "a big dog", "nothing"], full, refs) == pytest.approx([0.5, 0.0, 0.0])
    # the drop is signed: "a dog" against "a big dog" scores F1 2 (1 * 2/3) / (5/3) = 0.8, full depth 0.8 too;
    # "a big dog" scores 1, so the third-word candidate gains 0.2 (drop -0.2); "nothing" 2/3 F1 vs full 0
    early = ["the cat", "a big dog", "nothing"]
    assert drop_losses(early, full, refs) == pytest.approx([0.5, -0.2, -2 / 3])
    assert losses("drop", early, full, refs, "en") == drop_losses(early, full, refs)
    # another metric: ROUGE-2 of "the cat" against the reference: 1 bigram of 1 and of 5, F1 1/3; full depth 1
    assert drop_losses(["the cat"], ["the cat sat on the mat"], [refs[0]], metric="rouge2") == pytest.approx([2 / 3])
    assert losses("risk", early, full, refs, "en", "rouge1") == risk_losses(early, full, refs, metric="rouge1")


def _state(rule, layers=4, **model):
    args = argparse.Namespace(decoder_exit_rule=rule, **model)
    weights = {f"decoder.layers.{i}.fc1.weight": torch.zeros(1) for i in range(layers)}
    weights["decoder.embed_tokens.weight"] = torch.zeros(10, 8)
    return {"cfg": {"model": args}, "model": weights}


def test_the_knob_of_each_rule():
    assert knobs.checkpoint_knob(_state("confidence", exit_confidence="softmax"), "m.pt") == knobs.Knob(
        "--exit-threshold", 0.0, 1.0
    )
    saturation = knobs.checkpoint_knob(_state("confidence", exit_confidence="saturation"), "m.pt")
    assert (saturation.low, saturation.high) == (-1.0, 1.0)
    assert knobs.checkpoint_knob(_state("consistentee"), "m.pt").option == "--exit-threshold"
    patience = knobs.checkpoint_knob(_state("agreement"), "m.pt")
    assert patience == knobs.Knob("--exit-patience", 0, 2, integer=True) and patience.default_grid() == ["2", "1", "0"]
    with pytest.raises(HashEEError, match="m.pt: no dynamic decoder exit rule .* set by training"):
        knobs.checkpoint_knob(_state("none"), "m.pt")
    with pytest.raises(HashEEError, match="multinomial rule takes neither a threshold nor a patience"):
        knobs.checkpoint_knob(_state("dat-multinomial"), "m.pt")


def test_knob_values_are_checked_and_ordered_safest_first():
    threshold = knobs.Knob("--exit-threshold", 0.0, 1.0)
    grid = threshold.default_grid()
    assert len(grid) >= 10 and grid[0] == "1" and grid[-1] == "0" and grid[1] == "0.9"
    assert threshold.safest_first(["0.2", "0.95", "0.5"], "--grid") == ["0.95", "0.5", "0.2"]
    for bad, reason in (("abc", "is not a number in 0.0..1.0"), ("1.5", "is not a number"), ("nan", "is not")):
        with pytest.raises(HashEEError, match=f"^--grid: --exit-threshold '{bad}' {reason}"):
            threshold.safest_first([bad], "--grid")
    with pytest.raises(HashEEError, match="given twice"):
        threshold.safest_first(["0.5", "0.50"], "--grid")
    with pytest.raises(HashEEError, match="is not an integer >= 1"):
        knobs.Knob("--decoder-exit-max", 1, None, integer=True).parse("0.5", "--sweep")


def test_without_a_certified_value_full_depth_is_kept():
    from fairseq_hashee.cli.calibrate import RULE_OFF, conclusion

    summary = dict(loss="textual", delta=0.1, epsilon=0.1, option="--exit-threshold", examples=6, subset="valid")
    full_depth = overrides_option(RULE_OFF)
    text = conclusion({**summary, "metric": "rougeL", "chosen": None, "generate_options": full_depth})
    assert text.startswith(
        "no value of --exit-threshold is certified (expected textual consistency (1 - ROUGE-L against full depth's "
        "summary) at most 0.1 with "
    )
    drop = conclusion({**summary, "loss": "drop", "metric": "rouge2", "chosen": "0.5", "generate_options": []})
    assert drop.startswith("chosen: --exit-threshold 0.5 (expected ROUGE-2 drop against the reference (full depth's ")
    options = """--model-overrides '{"decoder_exit_rule": "none"}'"""
    assert text.endswith("keep full depth\nfairseq-generate options: " + options)


def test_model_overrides_in_generate_args_are_split_out_and_checked():
    """hashee-calibrate adds decoder_exit_rule to a user's --model-overrides for its full-depth run,
    so it takes them out of --generate-args (either spelling; the last wins, as in fairseq)."""
    assert split_model_overrides("--beam 4 --lenpen 2") == (["--beam", "4", "--lenpen", "2"], {})
    text = "--beam 4 --model-overrides \"{'exit_impl': 'masked'}\" --lenpen 2"
    assert split_model_overrides(text) == (["--beam", "4", "--lenpen", "2"], {"exit_impl": "masked"})
    text = "--model-overrides=\"{'a': 1}\" --beam 1 --model-overrides '{\"b\": 2}'"
    assert split_model_overrides(text) == (["--beam", "1"], {"b": 2})
    for text, message in (
        ("--model-overrides \"{'decoder_exit_rule': 'none'}\"", "sets decoder_exit_rule, which hashee-calibrate"),
        ("--model-overrides [1]", "expects a Python dict of model options"),
        ("--model-overrides {oops", "expects a Python dict of model options"),
        ("--beam 4 --model-overrides", "needs a value"),
    ):
        with pytest.raises(HashEEError, match="^" + re.escape(f"--generate-args: --model-overrides {message}")):
            split_model_overrides(text)
    # written back as fairseq reads them: JSON where it says the same, Python's literal where not
    assert overrides_option({"exit_impl": "masked", "n": 2}) == ["--model-overrides", '{"exit_impl": "masked", "n": 2}']
    assert overrides_option({"flag": True, "none": None}) == ["--model-overrides", "{'flag': True, 'none': None}"]
    assert overrides_option({}) == []
