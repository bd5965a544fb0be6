"""The losses that train exit rules, on hand-computed examples (docs/exit-methods.md)."""

import math
import re

import pytest
import torch
import torch.nn.functional as F
from fairseq.logging import metrics

from fairseq_hashee.criterions.calm_exit_classifier import balanced_layer_loss
from fairseq_hashee.criterions.dat_exit_classifier import DatExitClassifierCriterion, exit_loss, live_states
from fairseq_hashee.criterions.dat_joint import DatJointCriterion
from fairseq_hashee.criterions.multi_exit import MultiExitLabelSmoothedCrossEntropyCriterion
from fairseq_hashee.errors import HashEEError
from fairseq_hashee.exits.dat import Oracle, oracle_exits, reference_scores, smooth_along_positions

from helpers import TinyTask, build_hashee, tiny_dictionary, training_sample


def test_calm_classifier_balances_its_classes_per_layer():
    """CALM's code weighs layer i's positives by its share of negatives and its negatives by its share
    of positives, then averages the layers. Every row predicts class 1 with probability 3/4: a positive
    costs ln(4/3), a negative ln 4. Layer 1 (1 positive, 2 negatives): 2/3 ln(4/3) + 2 * 1/3 ln 4;
    layer 2 (2 positives, 1 negative): 2 * 1/3 ln(4/3) + 2/3 ln 4; layer 3 (all positive): nothing."""
    logits = [torch.tensor([[0.0, math.log(3.0)]] * 3)] * 3
    labels = [torch.tensor([1, 0, 0]), torch.tensor([1, 1, 0]), torch.tensor([1, 1, 1])]
    expected = 4.0 / 3.0 * (math.log(4.0 / 3.0) + math.log(4.0))
    assert float(balanced_layer_loss(logits, labels)) == pytest.approx(expected, rel=1e-6)


def test_dat_oracle_smoothed_along_each_sentence():
    """DAT's smoothed oracle (the paper's eq. 15: the RBF kernel exp(-|t - t'|^2 / sigma)), sigma 1, no
    penalty: a neighbour one position away weighs 1/e, two away 1/e^4. Sentence 0 has 3 positions and a
    pad; layer 1 scores them -1, -4, -1 (the pad +100, to show it is left out), layer 2 -1.2, -1, -1.2.
    Unsmoothed, positions 0 and 2 exit at layer 1; smoothed, position 0 scores -1 - 4/e - 1/e^4 at
    layer 1 and -1.2 - 1/e - 1.2/e^4 at layer 2, so every position exits at layer 2. Sentence 1's
    large scores do not reach sentence 0."""
    e1, e4 = math.exp(-1.0), math.exp(-4.0)
    scores = torch.tensor(
        [
            [[-1.0, -4.0, -1.0, 100.0], [50.0, 50.0, 50.0, 50.0]],  # layer 1: sentence 0, sentence 1
            [[-1.2, -1.0, -1.2, 100.0], [-50.0, -50.0, -50.0, -50.0]],  # layer 2
        ]
    )
    live = torch.tensor([[True, True, True, False], [True, True, True, True]])
    smoothed = smooth_along_positions(scores, live, 1.0)
    assert float(smoothed[0, 0, 0]) == pytest.approx(-1.0 - 4.0 * e1 - 1.0 * e4, rel=1e-6)
    assert float(smoothed[1, 0, 0]) == pytest.approx(-1.2 - 1.0 * e1 - 1.2 * e4, rel=1e-6)
    assert float(smoothed[1, 0, 1]) == pytest.approx(-1.0 - 2.4 * e1, rel=1e-6)
    # a wider kernel, sigma 4: one position away weighs exp(-1/4), two away 1/e
    wide = smooth_along_positions(scores, live, 4.0)
    assert float(wide[0, 0, 0]) == pytest.approx(-1.0 - 4.0 * math.exp(-0.25) - 1.0 * e1, rel=1e-6)
    assert oracle_exits(scores[:, 0, :3], 0.0).tolist() == [1, 2, 1]
    assert oracle_exits(smoothed[:, 0, :3], 0.0).tolist() == [2, 2, 2]
    assert torch.equal(smooth_along_positions(scores, live, 0.0), scores)


def _logits_predicting(predictions, vocab=4):
    """Logits (B, T, vocab) whose top token at each position is ``predictions`` (B, T)."""
    return F.one_hot(torch.tensor(predictions), vocab).float() * 3.0


def test_dat_correctness_oracle_by_hand():
    """The paper's eq. 16-17: C_i(t) = 1 where layer i's top prediction is the reference, e*(t) =
    argmax_i sum_t' kappa(t, t') C_i(t') - penalty * i. References 1, 2, 3 (a pad after them); layer 1
    predicts 1, 0, 0 (right at position 0), layer 2 and 3 predict 1, 2, 0 (right at 0 and 1).
    Unsmoothed, penalty 0.1: position 0 exits at layer 1 (right there), position 1 at layer 2 (its
    lowest right layer), position 2, right nowhere, at layer 1 (the argmax of -0.1 i). Smoothed with
    sigma 1, position 2 scores e^-4 * 1 + e^-1 * 0 = 0.018 at layer 1 and e^-4 + e^-1 = 0.386 at layers
    2 and 3: 0.018 - 0.1 < 0.386 - 0.2, so it exits at layer 2; position 0 scores 1 + e^-1 C(1) + ...:
    1 at layer 1 against 1.368 at layer 2, 1 - 0.1 < 1.368 - 0.2, layer 2."""
    target = torch.tensor([[1, 2, 3, 0]])
    live = torch.tensor([[True, True, True, False]])
    layers = [
        _logits_predicting([[1, 0, 0, 0]]),
        _logits_predicting([[1, 2, 0, 0]]),
        _logits_predicting([[1, 2, 0, 0]]),
    ]
    assert Oracle("correctness", 0.1, 0.0).exits(layers, target, live).tolist() == [1, 2, 1]
    assert Oracle("correctness", 0.1, 1.0).exits(layers, target, live).tolist() == [2, 2, 2]
    assert reference_scores(layers[0], target, "correctness")[live].tolist() == [1.0, 0.0, 0.0]
    # the likelihood oracle of the same logits scores log p(y_t): position 2's reference is never likely
    expected = torch.log_softmax(layers[1], dim=-1)[0, torch.arange(4), target[0]]
    assert torch.allclose(reference_scores(layers[1], target, "likelihood")[0], expected)


@pytest.mark.parametrize(
    "options, message",
    [
        (("bleu", 0.1, 0.0), "--dat-oracle: expected one of likelihood, correctness, got 'bleu'"),
        (("likelihood", -0.1, 0.0), "--dat-oracle-penalty: must be >= 0, got -0.1"),
        (("correctness", 0.1, -1.0), "--dat-oracle-smoothing: must be >= 0, got -1.0"),
    ],
)
def test_dat_oracle_options_are_checked(options, message):
    with pytest.raises(HashEEError, match="^" + re.escape(message)):
        Oracle(*options)


def _joint(dictionary, alpha, oracle="correctness"):
    return DatJointCriterion(TinyTask(dictionary), False, 0.1, dat_oracle=oracle, dat_exit_alpha=alpha)


@pytest.mark.parametrize("rule", ["dat-halting", "dat-multinomial"])
def test_dat_joint_loss_is_the_decoder_loss_plus_alpha_times_the_exit_loss(rule):
    """The paper's eq. 7 on a tiny model in training mode: the total is the uniform multi-exit loss plus
    alpha times the exit loss of the frozen stage's criterion on the same states, and the exit loss
    reaches the backbone (the paper back-propagates it into the encoder-decoder)."""
    dictionary = tiny_dictionary()
    model = build_hashee(dictionary, layers=3, decoder_exit_rule=rule).train()
    sample = training_sample(dictionary)
    torch.manual_seed(0)
    loss, sample_size, log = _joint(dictionary, 2.0)(model, sample)
    assert sample_size == sample["ntokens"]

    torch.manual_seed(0)  # the same dropout
    multi = MultiExitLabelSmoothedCrossEntropyCriterion(TinyTask(dictionary), False, 0.1, exit_loss_weights="uniform")
    net_output = multi.every_layer(model, sample)
    logits = multi.every_layer_logits(model, net_output)
    dec_loss, _, _ = multi.exit_losses(model, net_output, logits, sample)
    live = sample["target"].ne(dictionary.pad())
    oracle = Oracle("correctness", 0.1, 0.0).exits(logits, sample["target"], live)
    exit_nll, _, _ = exit_loss(model.decoder.exit_rule, live_states(net_output, live), oracle, 3)
    assert float(loss.detach()) == pytest.approx(float((dec_loss + 2.0 * exit_nll).detach()), rel=1e-5)
    assert float(log["exit_loss"]) == pytest.approx(float(exit_nll.detach()), rel=1e-5)
    assert log["exit_positions"] == int(live.sum()) and log["oracle_exit_sum"] == int(oracle.sum())

    def backbone_grad(alpha):
        model.zero_grad()
        torch.manual_seed(0)
        _joint(dictionary, alpha)(model, sample)[0].backward()
        return model.decoder.layers[0].fc1.weight.grad.clone()

    exit_grad = backbone_grad(1.0) - backbone_grad(0.0)
    assert float(exit_grad.abs().max()) > 1e-6  # the exit loss moves the first decoder layer too


def test_dat_frozen_accuracy_is_over_the_halting_decisions():
    """Halting decides once per layer a position reaches below the top: its accuracy is the share of
    those decisions the oracle agrees with, never over 100 (dividing by the positions counted
    a position exiting at layer 3 of 4 three times)."""
    dictionary = tiny_dictionary()
    model = build_hashee(dictionary, layers=4, decoder_exit_rule="dat-halting").eval()
    # no depth penalty: the likeliest layer, which on an untrained model is not always the first
    criterion = DatExitClassifierCriterion(TinyTask(dictionary), "likelihood", 0.0, 0.0)
    with torch.no_grad():
        _, positions, log = criterion(model, training_sample(dictionary))
    assert log["n_decisions"] > positions  # several decisions per position
    with metrics.aggregate() as aggregated:
        DatExitClassifierCriterion.reduce_metrics([log, {**log, "n_correct": 0}])
    logged = aggregated.get_smoothed_values()
    assert logged["correct"] == pytest.approx(100.0 * log["n_correct"] / (2 * log["n_decisions"]), abs=0.01)
    assert logged["oracle_exit"] == pytest.approx(log["oracle_exit_sum"] / positions, abs=0.01)


def test_dat_joint_validates_over_every_layer_and_refuses_other_rules():
    dictionary = tiny_dictionary()
    model = build_hashee(dictionary, layers=3, decoder_exit_rule="dat-halting").eval()
    rule = model.decoder.exit_rule
    rule.set_threshold(0.0)  # would exit every position at layer 1 if it fired
    with torch.no_grad():
        _, _, log = _joint(dictionary, 1.0, "likelihood")(model, training_sample(dictionary))
    assert model.decoder.exit_rule is rule and not torch.equal(log["loss_layer1"], log["loss_layer3"])
    confidence = build_hashee(dictionary, layers=3, decoder_exit_rule="confidence", exit_confidence="softmax")
    with pytest.raises(HashEEError, match="--criterion dat_joint trains DAT's halting classifiers"):
        _joint(dictionary, 1.0)(confidence, training_sample(dictionary))
    with pytest.raises(HashEEError, match="--dat-exit-alpha: must be >= 0, got -1"):
        _joint(dictionary, -1)
