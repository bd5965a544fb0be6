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

from fairseq_hashee.criterions.consistentee_policy import ConsistentEEJointCriterion, ConsistentEEPolicyCriterion
from fairseq_hashee.errors import HashEEError
from fairseq_hashee.exits.consistentee import (
    ConsistentEERule,
    epsilon_greedy,
    exploration_epsilon,
    exploring,
    memorized_layers,
    policy_log_probs,
    reinforce_loss,
    rewards,
)

from helpers import TinyTask, build_hashee, tiny_dictionary, training_sample

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

    # the released code's rewards: -CE (BERT) and -CE - alpha * layer (LLaMA); neither reads m
    assert torch.allclose(rewards(nll, exits, None, 0.1, 3, "ce"), torch.tensor([-0.5, -1.0, -2.0]))
    assert torch.allclose(rewards(nll, exits, None, 0.1, 3, "ce-layer"), torch.tensor([-0.6, -1.2, -2.3]))

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
    rule.explore = "sample"
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
    rule.explore = None
    p = rule.score(NO_NORM, 1, states, states)
    assert bool((p[easy] > 0.5).all()) and bool((p[~easy] < 0.5).all()), p
    assert bool(rule.fires(NO_NORM, 1, states, states).eq(easy).all())  # at the default threshold 0.5


def _sample(model, seed=0, ids=None):
    return training_sample(model.decoder.dictionary, seed, ids=ids)


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
    criterion = ConsistentEEPolicyCriterion(TinyTask(model.decoder.dictionary), 0.01, 3)
    sample = _sample(model)
    torch.manual_seed(1)
    loss, sample_size, log = criterion(model, sample)
    assert model.training and model.decoder.exit_rule.explore is None  # restored
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
    task = TinyTask(tiny_dictionary())
    with pytest.raises(HashEEError, match="--consistentee-alpha: must be >= 0, got -1"):
        ConsistentEEPolicyCriterion(task, -1.0, 4)
    with pytest.raises(HashEEError, match="--consistentee-samples: must be >= 2"):
        ConsistentEEPolicyCriterion(task, 0.01, 1)
    with pytest.raises(HashEEError, match=r"--consistentee-epsilon: expected a share in \[0, 1\], got 1.5"):
        ConsistentEEJointCriterion(task, consistentee_epsilon=1.5)
    with pytest.raises(HashEEError, match="--consistentee-epsilon-decay: must be > 0, got 0"):
        ConsistentEEPolicyCriterion(task, consistentee_epsilon_decay=0)
    with pytest.raises(HashEEError, match="--consistentee-policy-dim: must be >= 0"):
        build_hashee(tiny_dictionary(), decoder_exit_rule="consistentee", consistentee_policy_dim=-1)
    model = build_hashee(tiny_dictionary(), decoder_exit_rule="dat-halting").train()
    with pytest.raises(HashEEError, match="trains the exit policies of --decoder-exit-rule consistentee"):
        ConsistentEEPolicyCriterion(task, 0.01, 4)(model, _sample(model))
    with pytest.raises(HashEEError, match="--criterion consistentee_joint trains the exit policies"):
        ConsistentEEJointCriterion(task)(model, _sample(model))


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


@pytest.mark.parametrize("updates", [0, 1, 20, 100])
def test_epsilon_decays_as_the_released_llama_code_did(updates):
    """The LLaMA code's epsilon is EPS_END + (EPS_START - EPS_END) exp(-steps_done / EPS_DECAY) with 0.1, 0 and
    20000, and steps_done advances once per layer (32) per micro-batch (32 per update: batch 128, micro-batch
    4): after ``updates`` updates, steps_done = 1024 * updates. The criterion's default decays alike."""
    dictionary = tiny_dictionary()
    model = build_hashee(dictionary, decoder_exit_rule="consistentee")
    criterion = ConsistentEEPolicyCriterion(TinyTask(dictionary), consistentee_exploration="epsilon")
    model.decoder.exit_rule.set_num_updates(updates)
    with criterion._exploring(model, dropout=False):
        epsilon = model.decoder.exit_rule.epsilon
    assert epsilon == pytest.approx(0.0 + (0.1 - 0.0) * math.exp(-1.0 * (32 * 32 * updates) / 20000), rel=1e-9)


def test_explorations_by_hand():
    greedy = torch.tensor([True, False, True, True])
    explore_draw = torch.tensor([0.05, 0.5, 0.01, 0.9])  # below epsilon 0.1 at positions 0 and 2: a coin decides
    coin_draw = torch.tensor([0.7, 0.1, 0.2, 0.3])  # heads (exit) below 0.5
    assert epsilon_greedy(greedy, 0.1, explore_draw, coin_draw).tolist() == [False, False, True, True]
    assert epsilon_greedy(greedy, 0.0, explore_draw, coin_draw).tolist() == greedy.tolist()
    assert exploration_epsilon(0.1, 625, 0) == 0.1
    assert math.isclose(exploration_epsilon(0.1, 625, 625), 0.1 / math.e)

    rule = ConsistentEERule(4, 3, policy_dim=0)
    with torch.no_grad():
        rule.policies[0].weight.zero_()
        rule.policies[0].bias.copy_(torch.log(torch.tensor(0.6 / 0.4)))  # p = 0.6 everywhere
    h = torch.randn(64, 4)
    for explore, expected in ((None, True), ("greedy", True)):  # p >= threshold 0.5
        rule.explore = explore
        assert bool(rule.fires(NO_NORM, 1, h, h).eq(expected).all())
    rule.set_threshold(0.7)
    assert not bool(rule.fires(NO_NORM, 1, h, h).any())
    rule.explore, rule.epsilon = "epsilon", 1.0  # every decision a coin's, drawn after the exploration draw
    torch.manual_seed(3)
    torch.rand(64)
    coins = torch.rand(64) < 0.5
    torch.manual_seed(3)
    assert torch.equal(rule.fires(NO_NORM, 1, h, h), coins)


@pytest.mark.parametrize("exploration, dropout", [("greedy", True), ("sample", False)])
def test_exploring_lets_the_rule_decide_with_or_without_dropout(exploration, dropout):
    model = build_hashee(tiny_dictionary(), layers=3, decoder_exit_rule="consistentee", dropout=0.3).train()
    decoder = model.decoder
    assert decoder._active_rule() is None  # training runs every layer
    with exploring(model, exploration, dropout=dropout):
        assert decoder._active_rule() is decoder.exit_rule and decoder.exit_rule.explore == exploration
        assert decoder.layers[0].dropout_module.training == dropout
    assert model.training and decoder._active_rule() is None and decoder.exit_rule.explore is None


def _counting_decoder(model, monkeypatch):
    """The batch sizes of the decoder's forwards, those that run every layer (in eval mode) marked."""
    calls, forward = [], model.decoder.forward

    def counted(prev_output_tokens, *args, **kwargs):
        calls.append((prev_output_tokens.size(0), model.decoder.exit_rule is None))
        return forward(prev_output_tokens, *args, **kwargs)

    monkeypatch.setattr(model.decoder, "forward", counted)
    return calls


def test_memorized_layers_are_computed_once_per_example(monkeypatch):
    model = build_hashee(tiny_dictionary(), layers=3, decoder_exit_rule="consistentee").train()
    criterion = ConsistentEEPolicyCriterion(TinyTask(model.decoder.dictionary), 0.01, 2)
    fresh = ConsistentEEPolicyCriterion(TinyTask(model.decoder.dictionary), 0.01, 2)
    calls = _counting_decoder(model, monkeypatch)
    sample = _sample(model)
    _, _, first = criterion(model, sample)
    assert calls == [(3, True), (6, False)]  # every layer for the 3 examples, then 2 explored copies
    calls.clear()
    _, _, again = criterion(model, sample)
    assert calls == [(6, False)]  # the same examples: no memorized-layer pass
    assert again["memorized_layer_sum"] == first["memorized_layer_sum"]
    calls.clear()
    renamed = _sample(model, ids=[0, 9, 2])  # one example not seen yet
    _, _, partly = criterion(model, renamed)
    assert calls == [(1, True), (6, False)]
    assert partly["memorized_layer_sum"] == fresh(model, renamed)[2]["memorized_layer_sum"]
    calls.clear()
    criterion.reward = "ce"  # the released code's reward reads no memorized layer: no pass at all
    _, _, log = criterion(model, _sample(model, seed=1))
    assert calls == [(6, False)] and "memorized_layer_sum" not in log


def test_joint_stage_loss_by_hand(monkeypatch):
    """Policies at p = 0.5 everywhere: log pi = -(decisions) log 2; loss = CE at the exits + policy loss."""
    model = build_hashee(tiny_dictionary(), layers=3, decoder_exit_rule="consistentee").train()
    rule = model.decoder.exit_rule
    with torch.no_grad():
        for policy in rule.policies:
            policy[2].weight.zero_()
            policy[2].bias.zero_()
    criterion = ConsistentEEJointCriterion(TinyTask(model.decoder.dictionary), 0.3, 2, "ce-layer")
    sample = _sample(model)
    outputs, forward = [], model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: outputs.append(forward(*a, **k)) or outputs[-1])
    torch.manual_seed(0)
    loss, sample_size, log = criterion(model, sample)
    ((logits, extra),) = outputs
    target, live = sample["target"].repeat(2, 1), sample["target"].ne(1).repeat(2, 1)
    nll = -torch.log_softmax(logits.float(), -1).gather(-1, target.unsqueeze(-1)).squeeze(-1)[live]
    exits = extra["exits"][live].float()
    reward = -nll.detach() - 0.3 * exits
    advantage = reward - reward.view(2, -1).mean(dim=0).repeat(2)
    log_pi = -torch.clamp(exits, max=2) * math.log(2)  # decisions at layers 1..min(e, L - 1)
    expected = nll.sum() - (advantage * log_pi).sum()
    assert sample_size == 2 * sample["ntokens"] and bool((exits < 3).any()) and bool((exits > 1).any())
    assert torch.allclose(loss, expected, atol=1e-5)
    loss.backward()
    grads = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert "decoder.exit_rule.policies.0.2.bias" in grads and "encoder.layers.0.fc1.weight" in grads
    assert model.training and rule.explore is None and not model.decoder.rule_while_training

    model.eval()  # validation: stage 2's, one decoding at the threshold
    with torch.no_grad():
        loss, sample_size, log = criterion(model, sample)
    assert sample_size == sample["ntokens"] and math.isclose(float(loss), -log["reward_sum"], rel_tol=1e-6)
