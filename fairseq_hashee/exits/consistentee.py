"""ConsistentEE (Zeng et al., AAAI 2024): exit policies trained by policy gradient, guided by hardness.

A small *policy network* per decoder layer ``i`` below the top reads a
position's state after the layer and gives the probability ``p_i`` of exiting
there (the authors' BERT code: ``Linear(d, 32)``, GELU, ``Linear(32, 1)``,
sigmoid; with ``--consistentee-policy-dim 0`` one ``Linear(d, 1)``, their
LLaMA code's). At inference a position exits at the first layer whose
``p_i`` reaches ``--exit-threshold`` (default 0.5; the authors' test is ``p > 0.5``).

Training (``--criterion consistentee_policy``, criterions/consistentee_policy.py)
follows the first two of the authors' three stages (the third, the backbone
retrained under the policies' exits, is not here): the backbone and its exit heads first
(``multi_exit_label_smoothed_cross_entropy``), then the policies alone by
REINFORCE. Each batch is decoded ``K`` times with exits *sampled* from the
policies (``exit ~ Bernoulli(p_i)`` at each layer a position reaches), and a
position that exits at layer ``e`` is rewarded

    r = -CE(p_e, y) - alpha * e * (1 - m / L)

with ``m`` its *memorized layer* (``memorized_layers``): a position that the
shallow layers already get right (small ``m``) pays for depth, a hard one
(``m = L``) only for errors. The loss is ``-(r - b) log pi`` with ``b`` the
mean reward of the same position over the ``K`` copies and

    log pi = sum_{i < e} log(1 - p_i) + log p_e    (no ``log p_e`` term at the top layer, where nothing is decided)

The functions below are the pieces of that loss, each a function of tensors
so that it can be checked by hand.
"""

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import HashEEError
from .rules import ExitRule

DEFAULT_POLICY_DIM = 32  # the hidden size of the authors' BERT policy network


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
        # While set (by ``sampling_exits``), a position exits with probability p_i instead of when p_i >= threshold.
        self.explore = False

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

    def fires(self, decoder, layer: int, h: Tensor, h_prev: Tensor) -> Tensor:
        p = self.score(decoder, layer, h, h_prev)
        if self.explore:
            return torch.bernoulli(p).bool()
        return p >= self.threshold

    def decision_flops(self, decoder, layer: int) -> float:
        embed_dim = decoder.shape.embed_dim
        if self.policy_dim == 0:
            return 2.0 * embed_dim
        return 2.0 * embed_dim * self.policy_dim + 2.0 * self.policy_dim


@contextlib.contextmanager
def sampling_exits(model):
    """The model as at inference (eval mode, the rule deciding), but with exits drawn from the policies."""
    rule, training = model.decoder.exit_rule, model.training
    model.eval()
    rule.explore = True
    try:
        yield
    finally:
        rule.explore = False
        model.train(training)


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


def rewards(exit_nll: Tensor, exits: Tensor, memorized: Tensor, alpha: float, num_layers: int) -> Tensor:
    """``r = -CE at the exit layer - alpha * exit layer * (1 - memorized / L)``, elementwise."""
    hardness_weight = 1.0 - memorized.to(exit_nll.dtype) / num_layers
    return -exit_nll - alpha * exits.to(exit_nll.dtype) * hardness_weight


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
