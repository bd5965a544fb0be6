"""The losses that train exit rules, on hand-computed examples (docs/exit-methods.md)."""

import math

import pytest
import torch

from fairseq_hashee.criterions.calm_exit_classifier import balanced_layer_loss


def test_calm_classifier_balances_its_classes_per_layer():
    """CALM's code weighs layer i's positives by its share of negatives and its negatives by its share
    of positives, then averages the layers. Every row predicts class 1 with probability 3/4: a positive
    costs ln(4/3), a negative ln 4. Layer 1 (1 positive, 2 negatives): 2/3 ln(4/3) + 2 * 1/3 ln 4;
    layer 2 (2 positives, 1 negative): 2 * 1/3 ln(4/3) + 2/3 ln 4; layer 3 (all positive): nothing."""
    logits = [torch.tensor([[0.0, math.log(3.0)]] * 3)] * 3
    labels = [torch.tensor([1, 0, 0]), torch.tensor([1, 1, 0]), torch.tensor([1, 1, 1])]
    expected = 4.0 / 3.0 * (math.log(4.0 / 3.0) + math.log(4.0))
    assert float(balanced_layer_loss(logits, labels)) == pytest.approx(expected, rel=1e-6)
