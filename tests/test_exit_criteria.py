"""The losses that train exit rules, on hand-computed examples (docs/exit-methods.md)."""

import math

import pytest
import torch

from fairseq_hashee.criterions.calm_exit_classifier import balanced_layer_loss
from fairseq_hashee.exits.dat import oracle_exits, smooth_along_positions


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
    """DAT's smoothed oracle, sigma 1, no penalty. Sentence 0 has 3 positions and a pad; layer 1 scores
    them -1, -4, -1 (the pad +100, to show it is left out), layer 2 -1.2, -1, -1.2. Unsmoothed, positions
    0 and 2 exit at layer 1; smoothed, position 0 scores -1 - 4/e - 1/e^2 at layer 1 and
    -1.2 - 1/e - 1.2/e^2 at layer 2, so every position exits at layer 2. Sentence 1's large scores do
    not reach sentence 0."""
    e1, e2 = math.exp(-1.0), math.exp(-2.0)
    scores = torch.tensor(
        [
            [[-1.0, -4.0, -1.0, 100.0], [50.0, 50.0, 50.0, 50.0]],  # layer 1: sentence 0, sentence 1
            [[-1.2, -1.0, -1.2, 100.0], [-50.0, -50.0, -50.0, -50.0]],  # layer 2
        ]
    )
    live = torch.tensor([[True, True, True, False], [True, True, True, True]])
    smoothed = smooth_along_positions(scores, live, 1.0)
    assert float(smoothed[0, 0, 0]) == pytest.approx(-1.0 - 4.0 * e1 - 1.0 * e2, rel=1e-6)
    assert float(smoothed[1, 0, 0]) == pytest.approx(-1.2 - 1.0 * e1 - 1.2 * e2, rel=1e-6)
    assert float(smoothed[1, 0, 1]) == pytest.approx(-1.0 - 2.4 * e1, rel=1e-6)
    assert oracle_exits(scores[:, 0, :3], 0.0).tolist() == [1, 2, 1]
    assert oracle_exits(smoothed[:, 0, :3], 0.0).tolist() == [2, 2, 2]
    assert torch.equal(smooth_along_positions(scores, live, 0.0), scores)
