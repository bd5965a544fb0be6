"""ConsistentEE (Zeng et al., AAAI 2024): exit policies trained by policy gradient, guided by hardness.

A small *policy network* per decoder layer ``i`` below the top reads a
position's state after the layer and gives the probability ``p_i`` of exiting
there (the authors' BERT code: ``Linear(d, 32)``, GELU, ``Linear(32, 1)``,
sigmoid; with ``--consistentee-policy-dim 0`` one ``Linear(d, 1)``, their
LLaMA code's). At inference a position exits at the first layer whose
``p_i`` reaches ``--exit-threshold`` (default 0.5; the authors' test is ``p > 0.5``).

Training follows the authors' three stages: the backbone and its exit heads
(``multi_exit_label_smoothed_cross_entropy``), then the policies alone by
REINFORCE on the frozen backbone (``--criterion consistentee_policy``), then
backbone, heads and policies together at the exits the policies choose
(``--criterion consistentee_joint``, their ``train_both``; both in
criterions/consistentee_policy.py). Each batch is decoded ``K`` times with
the rule deciding, each decision *explored* (``--consistentee-exploration``):

- ``sample``: exit ~ Bernoulli(p_i) (ours, the default);
- ``greedy``: exit when ``p_i`` reaches the threshold, the copies differing by
  dropout only (the authors' BERT code: its epsilon is 0);
- ``epsilon``: with probability ``epsilon`` a fair coin decides, else greedy
  (their LLaMA code), ``epsilon = epsilon_0 * exp(-updates / decay)``.

A position that exits at layer ``e`` is rewarded (``--consistentee-reward``)

    hardness:  r = -CE(p_e, y) - alpha * e * (1 - m / L)    (design.md section 7's reading of the paper; the default)
    ce:        r = -CE(p_e, y)                              (the BERT code's train_rl and train_both)
    ce-layer:  r = -CE(p_e, y) - alpha * e                  (the LLaMA code)

with ``m`` its *memorized layer* (``memorized_layers``): a position that the
shallow layers already get right (small ``m``) pays for depth, a hard one
(``m = L``) only for errors. The policy loss is ``-(r - b) log pi`` with ``b`` the
mean reward of the same position over the ``K`` copies and

    log pi = sum_{i < e} log(1 - p_i) + log p_e    (no ``log p_e`` term at the top layer, where nothing is decided)

The functions below are the pieces of that loss, each a function of tensors
so that it can be checked by hand.
"""

import contextlib
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import HashEEError
from ..modules import flops
from .rules import ExitRule

DEFAULT_POLICY_DIM = 32  # the hidden size of the authors' BERT policy network
# The LLaMA code's epsilon schedule (modeling_llama.py l. 40-42, 800-802) counts ``steps_done``, which
# advances once per layer (32) in every forward of a micro-batch, and finetune.py accumulates 32 micro-batches
# (batch 128 / micro-batch 4) per optimizer update: EPS_DECAY 20000 steps are 20000 / 1024 updates.
RELEASED_EPSILON_DECAY_STEPS = 20000
RELEASED_STEPS_PER_UPDATE = 32 * (128 // 4)
DEFAULT_EPSILON_DECAY = RELEASED_EPSILON_DECAY_STEPS / RELEASED_STEPS_PER_UPDATE  # 19.53 updates
EXPLORATIONS = ("sample", "greedy", "epsilon")
REWARDS = ("hardness", "ce", "ce-layer")


class ConsistentEERule(ExitRule):
    name = "consistentee"
    default_threshold = 0.5
    trained_by = "consistentee_policy"

    def __init__(self, embed_dim: int, num_layers: int, policy_dim: int = DEFAULT_POLICY_DIM):
        super().__init__()
        if policy_dim < 0:
            raise HashEEError(f"--consistentee-policy-dim: must be >= 0, got {policy_dim}")
        self.policy_dim = policy_dim
        # Entry i - 1 is layer i's policy (layers 1..L-1: the top layer exits every position anyway).
        self.policies = nn.ModuleList(
            nn.Sequential(nn.Linear(embed_dim, policy_dim), nn.GELU(), nn.Linear(policy_dim, 1))
            if policy_dim > 0
            else nn.Linear(embed_dim, 1)
            for _ in range(num_layers - 1)
        )
        # While set (by ``exploring``), how a decision is drawn (EXPLORATIONS); at inference, p_i >= threshold.
        self.explore: Optional[str] = None
        self.epsilon = 0.0  # the epsilon-greedy exploration's share of random decisions
        self.num_updates = 0  # fairseq's update count (set_num_updates), for epsilon's decay

    @staticmethod
    def policy_input(decoder, h: Tensor) -> Tensor:
        """What a policy reads of states ``h``: pre-LN stacks' states through the decoder's
        final norm, as the LLaMA code reads them (post-LN BART's are normalised already)."""
        return h if decoder.layer_norm is None else decoder.layer_norm(h)

    def exit_logits(self, decoder, layer: int, h: Tensor) -> Tensor:
        """``log(p / (1 - p))`` (N,) of layer ``layer``'s policy for states ``h`` (N, C)."""
        return self.policies[layer - 1](self.policy_input(decoder, h)).squeeze(-1)

    def score(self, decoder, layer: int, h: Tensor, h_prev: Tensor) -> Tensor:
        return torch.sigmoid(self.exit_logits(decoder, layer, h).float())

    def set_num_updates(self, num_updates: int) -> None:
        self.num_updates = num_updates

    def fires(self, decoder, layer: int, h: Tensor, h_prev: Tensor) -> Tensor:
        p = self.score(decoder, layer, h, h_prev)
        if self.explore == "sample":
            return torch.bernoulli(p).bool()
        greedy = p >= self.threshold
        if self.explore == "epsilon":
            return epsilon_greedy(greedy, self.epsilon, torch.rand_like(p), torch.rand_like(p))
        return greedy

    def decision_flops(self, decoder, layer: int) -> float:
        embed_dim = decoder.shape.embed_dim
        if self.policy_dim == 0:
            return flops.linear(embed_dim, 1)
        return flops.linear(embed_dim, self.policy_dim) + flops.linear(self.policy_dim, 1)


@contextlib.contextmanager
def exploring(model, exploration: str, epsilon: float = 0.0, dropout: bool = False):
    """The decoder's rule deciding exits as at inference, each decision drawn by ``exploration``
    (EXPLORATIONS); the model in train mode (dropout on) with ``dropout``, else in eval mode."""
    decoder, rule, training = model.decoder, model.decoder.exit_rule, model.training
    model.train(dropout)
    decoder.rule_while_training = True
    rule.explore, rule.epsilon = exploration, epsilon
    try:
        yield
    finally:
        rule.explore, rule.epsilon = None, 0.0
        decoder.rule_while_training = False
        model.train(training)


def epsilon_greedy(greedy: Tensor, epsilon: float, explore_draw: Tensor, coin_draw: Tensor) -> Tensor:
    """Exit decisions (N,): where ``explore_draw`` (uniform, N) is below ``epsilon`` a fair coin
    (``coin_draw < 0.5``), elsewhere the greedy decision ``greedy`` (N,)."""
    return torch.where(explore_draw < epsilon, coin_draw < 0.5, greedy)


def exploration_epsilon(start: float, decay: float, updates: int) -> float:
    """``start * exp(-updates / decay)``: the LLaMA code's schedule, decaying to 0 (its EPS_END)."""
    return start * math.exp(-updates / decay)


def memorized_layers(correct: Tensor) -> Tensor:
    """Memorized layer (N,) in 1..L of positions whose heads' top predictions are right or wrong, ``correct`` (L, N).

    The shallowest layer from which every deeper head, the top one included,
    predicts the reference; ``L`` when the top head is wrong (the authors'
    code: walk down from the top layer while the prediction stays right).
    """
    num_layers = correct.size(0)
    # Heads right from the top down without a break: the top rows of a cumulative product over the flipped stack.
    streak = correct.flip(0).long().cumprod(dim=0).sum(dim=0)
    return (num_layers + 1 - streak).clamp(max=num_layers)


def rewards(
    exit_nll: Tensor,
    exits: Tensor,
    memorized: Optional[Tensor],
    alpha: float,
    num_layers: int,
    kind: str = "hardness",
) -> Tensor:
    """The reward ``kind`` (REWARDS) of exiting at layers ``exits`` with CE ``exit_nll``, elementwise:
    ``-CE - alpha * exit layer * (1 - memorized / L)``, ``-CE`` or ``-CE - alpha * exit layer``
    (``memorized`` is read by ``hardness`` only)."""
    if kind == "ce":
        return -exit_nll
    depth = exits.to(exit_nll.dtype)
    if kind == "hardness":
        depth = depth * (1.0 - memorized.to(exit_nll.dtype) / num_layers)
    return -exit_nll - alpha * depth


def policy_log_probs(exit_logits: Tensor, exits: Tensor, min_layer: int = 1) -> Tensor:
    """``log pi`` (N,) of the exit layers ``exits`` (N,) under policies whose logits
    at layers 1..L-1 are ``exit_logits`` (L-1, N): continue (``log(1 - p_i)``) at
    every layer from ``min_layer`` below the exit, exit (``log p_e``) at the exit
    unless it is the top layer. Layers below ``min_layer`` decide nothing."""
    layers = torch.arange(1, exit_logits.size(0) + 1, device=exits.device)[:, None]  # (L-1, 1)
    deciding = layers >= min_layer
    continued = (layers < exits[None, :]) & deciding
    exited = (layers == exits[None, :]) & deciding
    logits = exit_logits.float()
    zero = logits.new_zeros(())
    log_pi = torch.where(continued, F.logsigmoid(-logits), zero) + torch.where(exited, F.logsigmoid(logits), zero)
    return log_pi.sum(dim=0)


def reinforce_loss(reward: Tensor, log_pi: Tensor, samples: int) -> Tensor:
    """``sum -(r - b) log pi`` over positions decoded ``samples`` times: ``reward`` and
    ``log_pi`` (samples * N,), copy ``k`` of position ``n`` at ``k * N + n``; ``b`` is
    the position's mean reward over its copies (a constant: no gradient)."""
    per_copy = reward.detach().view(samples, -1)
    advantage = (per_copy - per_copy.mean(dim=0, keepdim=True)).view(-1)
    return -(advantage * log_pi).sum()
