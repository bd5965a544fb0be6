"""ConsistentEE's policy training (exits/consistentee.py, criterions/consistentee_policy.py).

The rule itself (replay, never firing, skip == masked, FLOPs) is in
test_exit_rules.py with the other rules; here: the memorized layer, the
REINFORCE loss against numbers worked by hand, a toy whose right exits are
known, and the criterion on a tiny model.
"""

import math
from types import SimpleNamespace

import pytest
import torch

from fairseq_hashee.criterions.consistentee_policy import ConsistentEEPolicyCriterion
from fairseq_hashee.errors import HashEEError
from fairseq_hashee.exits.consistentee import (
    ConsistentEERule,
    memorized_layers,
    policy_log_probs,
    reinforce_loss,
    rewards,
)

from helpers import build_hashee, random_batch, tiny_dictionary

NO_NORM = SimpleNamespace(layer_norm=None)  # what the rule reads of a post-LN decoder


def test_memorized_layer_is_where_every_deeper_head_is_right():
    correct = torch.tensor(
        [
            # layer 1..4 (rows) of six positions (columns)
            [1, 0, 1, 1, 0, 1],
            [1, 1, 0, 1, 0, 1],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 1, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    # right everywhere: 1; from layer 2 on: 2; from 3 on (layer 2 wrong): 3; top wrong: L;
    # only the top right: L; a wrong layer 3 under a right top: L
    assert memorized_layers(correct).tolist() == [1, 2, 3, 4, 4, 4]


def test_reward_and_log_probabilities_by_hand():
    p = torch.tensor([[0.2, 0.5, 0.9], [0.25, 0.6, 0.3]])  # layers 1, 2 of three positions, L = 3
    logits = torch.log(p / (1 - p))
    exits = torch.tensor([1, 2, 3])
    expected = [math.log(0.2), math.log(0.5) + math.log(0.6), math.log(0.1) + math.log(0.7)]
    assert torch.allclose(policy_log_probs(logits, exits), torch.tensor(expected))
    # below --exit-min-layer nothing is decided
    assert torch.allclose(policy_log_probs(logits[:, 1:], exits[1:], min_layer=2), torch.log(torch.tensor([0.6, 0.7])))

    nll = torch.tensor([0.5, 1.0, 2.0])
    memorized = torch.tensor([1, 3, 2])
    r = rewards(nll, exits, memorized, alpha=0.1, num_layers=3)
    assert torch.allclose(r, torch.tensor([-0.5 - 0.1 * 1 * (2 / 3), -1.0 - 0.0, -2.0 - 0.1 * 3 * (1 / 3)]))

    # two copies of two positions: baselines 2 and 3.5, advantages -1, -1.5, 1, 1.5
    reward = torch.tensor([1.0, 2.0, 3.0, 5.0], requires_grad=True)
    log_pi = torch.tensor([-0.1, -0.2, -0.3, -0.4], requires_grad=True)
    loss = reinforce_loss(reward, log_pi, samples=2)
    assert math.isclose(float(loss.detach()), -(-1 * -0.1 - 1.5 * -0.2 + 1 * -0.3 + 1.5 * -0.4), rel_tol=1e-6)
    loss.backward()
    assert reward.grad is None or not reward.grad.any()  # the reward is a constant
    assert torch.allclose(log_pi.grad, torch.tensor([1.0, 1.5, -1.0, -1.5]))


def test_policy_gradient_learns_the_exits_known_to_be_right():
    """Positions whose reference layer 1 already predicts learn to exit there, the others not."""
    torch.manual_seed(0)
    layers, dim, positions, samples = 2, 8, 32, 4
    rule = ConsistentEERule(dim, layers, policy_dim=8)
    easy = torch.arange(positions) % 2 == 0
    states = torch.randn(positions, dim)
    states[:, 0] = torch.where(easy, 1.0, -1.0)
    # CE of the reference at each exit layer: easy positions are right from layer 1 (memorized there),
    # hard ones only at the top (memorized layer L, so depth costs them nothing)
    nll = {1: torch.where(easy, 0.1, 3.0), 2: torch.full((positions,), 0.1)}
    memorized = torch.where(easy, 1, 2)
    optimizer = torch.optim.Adam(rule.parameters(), lr=0.03)
    copies = states.repeat(samples, 1)
    rule.explore = True
    for _ in range(60):
        with torch.no_grad():
            fired = rule.fires(NO_NORM, 1, copies, copies)
        exits = torch.where(fired, 1, 2)
        reward = rewards(
            torch.where(fired, nll[1].repeat(samples), nll[2].repeat(samples)),
            exits,
            memorized.repeat(samples),
            1.0,
            layers,
        )
        log_pi = policy_log_probs(rule.exit_logits(NO_NORM, 1, copies)[None], exits)
        optimizer.zero_grad()
        (reinforce_loss(reward, log_pi, samples) / reward.numel()).backward()
        optimizer.step()
    rule.explore = False
    p = rule.score(NO_NORM, 1, states, states)
    assert bool((p[easy] > 0.5).all()) and bool((p[~easy] < 0.5).all()), p
    assert bool(rule.fires(NO_NORM, 1, states, states).eq(easy).all())  # at the default threshold 0.5


class _Task:
    def __init__(self, dictionary):
        self.source_dictionary = self.target_dictionary = dictionary


def _sample(model, seed=0):
    dictionary = model.decoder.dictionary
    gen = torch.Generator().manual_seed(seed)
    src, src_lengths, prev = random_batch(dictionary, gen, bsz=3)
    target = torch.randint(dictionary.nspecial, len(dictionary), prev.shape, generator=gen)
    target[prev.eq(dictionary.pad())] = dictionary.pad()
    net_input = {"src_tokens": src, "src_lengths": src_lengths, "prev_output_tokens": prev}
    return {"net_input": net_input, "target": target, "ntokens": int(target.ne(dictionary.pad()).sum())}


@pytest.mark.parametrize("bias, mean_exit, pre_ln", [(30.0, 1.0, False), (-30.0, 3.0, True)])
def test_criterion_trains_the_policies_only(bias, mean_exit, pre_ln):
    """Only the policies get gradients, also where they read the decoder's final norm (pre-LN)."""
    model = build_hashee(
        tiny_dictionary(), layers=3, decoder_exit_rule="consistentee", decoder_normalize_before=pre_ln
    ).train()
    assert (model.decoder.layer_norm is not None) == pre_ln
    with torch.no_grad():  # policies certain to exit at once, or never
        for policy in model.decoder.exit_rule.policies:
            policy[2].bias.fill_(bias)
    criterion = ConsistentEEPolicyCriterion(_Task(model.decoder.dictionary), 0.01, 3)
    sample = _sample(model)
    torch.manual_seed(1)
    loss, sample_size, log = criterion(model, sample)
    assert model.training and not model.decoder.exit_rule.explore  # restored
    assert sample_size == 3 * sample["ntokens"]
    assert log["exit_layer_sum"] / sample_size == mean_exit
    assert 1 <= log["memorized_layer_sum"] / sample_size <= 3
    loss.backward()
    with_grad = [name for name, p in model.named_parameters() if p.grad is not None]
    assert with_grad and all(name.startswith("decoder.exit_rule.policies.") for name in with_grad)

    model.eval()
    with torch.no_grad():
        loss, sample_size, log = criterion(model, sample)
    assert sample_size == sample["ntokens"]  # one decoding, at the threshold
    assert math.isclose(float(loss), -log["reward_sum"], rel_tol=1e-6)
    assert log["exit_layer_sum"] / sample_size == mean_exit


def test_criterion_refuses_what_it_cannot_train():
    task = _Task(tiny_dictionary())
    with pytest.raises(HashEEError, match="--consistentee-alpha: must be >= 0, got -1"):
        ConsistentEEPolicyCriterion(task, -1.0, 4)
    with pytest.raises(HashEEError, match="--consistentee-samples: must be >= 2"):
        ConsistentEEPolicyCriterion(task, 0.01, 1)
    with pytest.raises(HashEEError, match="--consistentee-policy-dim: must be >= 0"):
        build_hashee(tiny_dictionary(), decoder_exit_rule="consistentee", consistentee_policy_dim=-1)
    model = build_hashee(tiny_dictionary(), decoder_exit_rule="dat-halting").train()
    with pytest.raises(HashEEError, match="trains the exit policies of --decoder-exit-rule consistentee"):
        ConsistentEEPolicyCriterion(task, 0.01, 4)(model, _sample(model))


def test_policies_start_fresh_only_when_training():
    """A stage-1 checkpoint (without policies) starts stage 2; generating from it is refused."""
    stage1 = build_hashee(tiny_dictionary(), decoder_exit_rule="dat-halting").state_dict()
    model = build_hashee(tiny_dictionary(), decoder_exit_rule="consistentee")
    fresh = {k: v.clone() for k, v in model.state_dict().items() if ".exit_rule." in k}
    needs = r"which the consistentee exit rule needs; train it first \(--criterion consistentee_policy\)"
    with pytest.raises(HashEEError, match=r"the checkpoint has no decoder\.exit_rule\.policies\.0\..*" + needs):
        model.upgrade_state_dict_named(dict(stage1), "")
    model.exit_parameters_may_start_fresh = True  # as the task sets it for fairseq-train
    state = dict(stage1)
    model.upgrade_state_dict_named(state, "")
    assert not any("halting" in k for k in state)  # the other rule's parameters are dropped
    model.load_state_dict(state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in fresh.items())
