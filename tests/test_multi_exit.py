"""Multi-exit training's criterion (criterions/multi_exit.py) in-process, on a tiny model."""

import torch

from fairseq_hashee.criterions.multi_exit import MultiExitLabelSmoothedCrossEntropyCriterion

from helpers import TinyTask, build_hashee, tiny_dictionary, training_sample


def test_validation_loss_is_over_every_layer_whatever_the_rule():
    """A rule at threshold 0 would exit every position at layer 1 in eval mode; validation sets it aside."""
    dictionary = tiny_dictionary()
    model = build_hashee(dictionary, layers=3, decoder_exit_rule="confidence", exit_confidence="softmax").eval()
    rule = model.decoder.exit_rule
    rule.set_threshold(0.0)
    criterion = MultiExitLabelSmoothedCrossEntropyCriterion(TinyTask(dictionary), False, 0.1)
    sample = training_sample(dictionary)
    with torch.no_grad():
        loss, _, log = criterion(model, sample)
        model.decoder.exit_rule = None  # the model every layer runs in
        expected, _, expected_log = criterion(model, sample)
        model.decoder.exit_rule = rule
        _, extra = model(**sample["net_input"])
    live = sample["net_input"]["prev_output_tokens"].ne(dictionary.pad())
    assert bool((extra["exits"][live] == 1).all())  # the rule is back and would exit everything at layer 1
    assert torch.equal(loss, expected)
    for key in ("nll_loss", "loss_layer1", "loss_layer2", "loss_layer3"):
        assert torch.equal(log[key], expected_log[key]), key
    assert not torch.equal(log["loss_layer3"], log["loss_layer1"])
