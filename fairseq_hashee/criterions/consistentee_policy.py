"""ConsistentEE's stages 2 and 3: the policies by REINFORCE, then the model at their exits (exits/consistentee.py).

Stage 2 (``--criterion consistentee_policy``, the authors' ``train_rl``), per
batch, the backbone frozen (only the rule's parameters require grad, see
frozen_backbone.py) and without gradients:

1. with the ``hardness`` reward, each target position's *memorized layer*
   ``m``, the shallowest layer from which every deeper head predicts the
   reference (``L`` when the top head is wrong), from a forward that runs every
   layer in eval mode. Like the authors, who compute it once after stage 1,
   it is computed once per example: kept by example id (the sample's ``id``)
   and reference, so a later batch holding the example reuses it;
2. the decoder runs on ``K`` copies of the batch (``--consistentee-samples``;
   the encoder once) with the exit rule deciding, each decision explored as
   ``--consistentee-exploration`` says (eval mode; ``greedy`` in train mode, its
   copies differing by dropout). Exited positions are frozen as at
   inference, so later positions attend to their frozen states;
3. a copy of a position exiting at ``e`` earns the reward
   ``--consistentee-reward`` (``alpha = --consistentee-alpha``), and the loss
   is ``-(r - b) log pi`` summed over copies and positions, ``b`` the
   position's mean reward over its ``K`` copies; only ``log pi`` (the policies'
   continue/exit probabilities on the states of step 2) carries a gradient.

Stage 3 (``--criterion consistentee_joint``, their ``train_both``) trains
backbone, heads and policies together: the ``K`` copies run in train mode
(dropout on, the encoder per copy) with the rule deciding, and the loss is
the cross-entropy at each copy's exits plus the policy loss of stage 2, both
with gradients into every parameter (the policies read the backbone's states).
This criterion is the only place a rule fires while the model trains.

Validation (both) decodes once with the inference rule (exit when ``p_i``
reaches ``--exit-threshold``) and reports ``loss = -mean reward``, what the
policies maximise, so fairseq's best checkpoint is the best policy; its
speed-up report is that decoding's (step 1 is not counted).
"""

import contextlib
from dataclasses import dataclass, field
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from fairseq.criterions import register_criterion
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from torch import Tensor

from ..errors import HashEEError
from ..exits.consistentee import (
    DEFAULT_EPSILON_DECAY,
    EXPLORATIONS,
    REWARDS,
    ConsistentEERule,
    exploration_epsilon,
    exploring,
    memorized_layers,
    policy_log_probs,
    reinforce_loss,
    rewards,
)
from ..exits.rules import every_layer_in_eval
from .frozen_backbone import FrozenBackboneCriterion
from .multi_exit import check_exit_heads, layer_logits

NAME = "consistentee_policy"
JOINT = "consistentee_joint"


@dataclass
class ConsistentEEPolicyConfig(FairseqDataclass):
    consistentee_alpha: float = field(
        default=0.01,
        metadata={"help": "the reward's depth cost per exit layer (hardness, ce-layer): larger exits earlier"},
    )
    consistentee_samples: int = field(
        default=4, metadata={"help": "K: each batch is decoded K times with explored exits; baseline = mean reward"}
    )
    consistentee_reward: ChoiceEnum(REWARDS) = field(
        default="hardness",
        metadata={"help": "hardness: -CE - alpha * layer * (1 - memorized / L); ce: -CE (the released BERT code); "
                  "ce-layer: -CE - alpha * layer (the released LLaMA code)"},
    )  # fmt: skip
    consistentee_exploration: ChoiceEnum(EXPLORATIONS) = field(
        default="sample",
        metadata={"help": "sample: exit ~ Bernoulli(p); greedy: p >= threshold, copies differing by dropout (the "
                  "released BERT code); epsilon: epsilon-greedy with a fair coin (the released LLaMA code)"},
    )  # fmt: skip
    consistentee_epsilon: float = field(
        default=0.1, metadata={"help": "--consistentee-exploration epsilon: the share of random decisions at update 0"}
    )
    consistentee_epsilon_decay: float = field(
        default=DEFAULT_EPSILON_DECAY,
        metadata={"help": "--consistentee-exploration epsilon: epsilon * exp(-updates / decay) (the LLaMA code's "
                  "EPS_DECAY, 20000 steps of one per layer (32) per micro-batch (32 per update): 19.53 updates)"},
    )  # fmt: skip


@contextlib.contextmanager
def _not_measured(model):
    """No FLOPs counted (the memorized-layer pass is bookkeeping, not decoding)."""
    stacks = [model.encoder, model.decoder]
    meters = [stack.speedup_meter for stack in stacks]
    for stack in stacks:
        stack.speedup_meter = None
    try:
        yield
    finally:
        for stack, meter in zip(stacks, meters):
            stack.speedup_meter = meter


@register_criterion(NAME, dataclass=ConsistentEEPolicyConfig)
class ConsistentEEPolicyCriterion(FrozenBackboneCriterion):
    METRICS = {
        "loss": ("loss", 1.0, 3),
        "reward": ("reward_sum", 1.0, 3),
        "exit_nll": ("exit_nll_sum", 1.0, 3),
        "exit_layer": ("exit_layer_sum", 1.0, 2),
        "memorized_layer": ("memorized_layer_sum", 1.0, 2),
    }
    name = NAME

    def __init__(
        self,
        task,
        consistentee_alpha=0.01,
        consistentee_samples=4,
        consistentee_reward="hardness",
        consistentee_exploration="sample",
        consistentee_epsilon=0.1,
        consistentee_epsilon_decay=DEFAULT_EPSILON_DECAY,
    ):
        super().__init__(task)
        if not consistentee_alpha >= 0:
            raise HashEEError(f"--consistentee-alpha: must be >= 0, got {consistentee_alpha}")
        if consistentee_samples < 2:
            raise HashEEError(
                f"--consistentee-samples: must be >= 2 (the baseline is the mean reward over the copies), "
                f"got {consistentee_samples}"
            )
        if not 0 <= consistentee_epsilon <= 1:
            raise HashEEError(f"--consistentee-epsilon: expected a share in [0, 1], got {consistentee_epsilon}")
        if not consistentee_epsilon_decay > 0:
            raise HashEEError(f"--consistentee-epsilon-decay: must be > 0, got {consistentee_epsilon_decay}")
        self.alpha = consistentee_alpha
        self.samples = consistentee_samples
        self.reward = str(consistentee_reward)
        self.exploration = str(consistentee_exploration)
        self.epsilon = (consistentee_epsilon, consistentee_epsilon_decay)
        # (example id, hash of its reference) -> memorized layer (uint8, CPU) of each of its target positions
        self.memorized_cache: Dict[Tuple[int, int], Tensor] = {}

    def _checked_rule(self, model) -> ConsistentEERule:
        check_exit_heads(model, self.name)
        decoder = model.decoder
        if not isinstance(decoder.exit_rule, ConsistentEERule):
            raise HashEEError(
                f"--criterion {self.name} trains the exit policies of --decoder-exit-rule consistentee, "
                "which this model does not have"
            )
        if not decoder.no_early_exits:
            raise HashEEError(
                f"--criterion {self.name}: decoder hash exits (--decoder-exits, --decoder-hash-table) cannot be "
                "combined with the consistentee rule's training; keep them for the encoder"
            )
        if decoder.num_layers < 2:
            raise HashEEError(f"--criterion {self.name}: a decoder of one layer has no exit to learn")
        return decoder.exit_rule

    def _exploring(self, model, dropout: bool):
        rule = model.decoder.exit_rule
        start, decay = self.epsilon
        epsilon = exploration_epsilon(start, decay, rule.num_updates) if self.exploration == "epsilon" else 0.0
        return exploring(model, self.exploration, epsilon, dropout)

    def _memorized(self, model, sample, live: Tensor) -> Tensor:
        """The memorized layers (N,) of the batch's live target positions, row by row: each example's
        from the cache, or from one forward over every layer (eval mode, no gradient) of the examples
        seen for the first time."""
        target, decoder, net_input = sample["target"], model.decoder, sample["net_input"]
        keys = [(int(i), hash(tuple(row[keep].tolist()))) for i, row, keep in zip(sample["id"], target, live)]
        missing = [b for b, key in enumerate(keys) if key not in self.memorized_cache]
        if missing:
            rows = torch.tensor(missing, device=target.device)
            with torch.no_grad(), every_layer_in_eval(model), _not_measured(model):
                full = model(
                    net_input["src_tokens"][rows], net_input["src_lengths"][rows], net_input["prev_output_tokens"][rows]
                )
                correct = torch.stack(
                    [
                        layer_logits(model, full, i).argmax(dim=-1) == target[rows]
                        for i in range(1, decoder.num_layers + 1)
                    ]
                )  # (L, rows, T)
            memorized = memorized_layers(correct.flatten(1)).view(rows.numel(), -1)
            for b, layers in zip(missing, memorized):
                self.memorized_cache[keys[b]] = layers[live[b]].to(torch.uint8).cpu()
        return torch.cat([self.memorized_cache[key] for key in keys]).to(target.device, torch.long)

    def _rewards(self, exit_nll: Tensor, exits: Tensor, memorized, num_layers: int) -> Tensor:
        """The copies' rewards; ``memorized`` (one copy's, or None) is repeated over the copies."""
        repeated = None if memorized is None else memorized.repeat(exits.numel() // memorized.numel())
        return rewards(exit_nll, exits, repeated, self.alpha, num_layers, self.reward)

    def forward(self, model, sample, reduce=True):
        rule = self._checked_rule(model)
        decoder = model.decoder
        training = model.training
        samples = self.samples if training else 1
        net_input, target = sample["net_input"], sample["target"]
        live = target.ne(self.padding_idx)
        live_copies = live.repeat(samples, 1)  # copy k of sentence b is row k * B + b
        num_layers = decoder.num_layers

        with torch.no_grad():
            with every_layer_in_eval(model):
                encoder_out = model.encoder(net_input["src_tokens"], src_lengths=net_input["src_lengths"])
            memorized = self._memorized(model, sample, live) if self.reward == "hardness" else None
            # Training explores exits; validation decides as at inference (eval mode already).
            explore = self._exploring(model, self.exploration == "greedy") if training else contextlib.nullcontext()
            with explore:
                rows = torch.arange(target.size(0), device=target.device).repeat(samples)
                copies = model.encoder.reorder_encoder_out(encoder_out, rows) if samples > 1 else encoder_out
                features, extra = decoder(net_input["prev_output_tokens"][rows], encoder_out=copies, features_only=True)
            exits = extra["exits"]
            exit_nll = []
            for k in range(samples):  # one copy's logits at a time
                part = slice(k * target.size(0), (k + 1) * target.size(0))
                logprobs = F.log_softmax(
                    decoder.exit_heads.output(decoder, features[part], exits[part]).float(), dim=-1
                )
                exit_nll.append(-logprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)[live])
                del logprobs
            exit_nll = torch.cat(exit_nll)
            exits = exits[live_copies]
            reward = self._rewards(exit_nll, exits, memorized, num_layers)

            if training:  # what the policies read of the states the explored decoding computed
                inputs = [
                    rule.policy_input(decoder, extra["inner_states"][i].transpose(0, 1)[live_copies])
                    for i in range(1, num_layers)
                ]

        if training:
            # The policies again, with gradients (theirs only: their inputs are constants).
            exit_logits = torch.stack([rule.policies[i - 1](inputs[i - 1]).squeeze(-1) for i in range(1, num_layers)])
            loss = reinforce_loss(reward, policy_log_probs(exit_logits, exits, rule.min_layer), samples)
        else:
            loss = -reward.sum()
        return loss, int(reward.numel()), self._logs(loss, sample, reward, exit_nll, exits, memorized, samples)

    def _logs(self, loss, sample, reward, exit_nll, exits, memorized, samples) -> dict:
        logging_output = {
            "loss": loss.data,
            "sample_size": int(reward.numel()),
            "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0),
            "reward_sum": float(reward.sum()),
            "exit_nll_sum": float(exit_nll.sum()),
            "exit_layer_sum": int(exits.sum()),
        }
        if memorized is not None:
            logging_output["memorized_layer_sum"] = int(memorized.sum()) * samples
        return logging_output


@register_criterion(JOINT, dataclass=ConsistentEEPolicyConfig)
class ConsistentEEJointCriterion(ConsistentEEPolicyCriterion):
    """Stage 3: ``sum CE(p_e, y) + sum -(r - b) log pi`` over the ``K`` copies' live positions, every
    parameter trained; validation as stage 2's."""

    name = JOINT
    frozen_backbone = False

    def forward(self, model, sample, reduce=True):
        if not model.training:
            return super().forward(model, sample, reduce)
        rule = self._checked_rule(model)
        decoder, samples = model.decoder, self.samples
        net_input, target = sample["net_input"], sample["target"]
        live = target.ne(self.padding_idx)
        live_copies = live.repeat(samples, 1)
        memorized = self._memorized(model, sample, live) if self.reward == "hardness" else None
        rows = torch.arange(target.size(0), device=target.device).repeat(samples)
        with self._exploring(model, dropout=True):
            logits, extra = model(
                net_input["src_tokens"][rows], net_input["src_lengths"][rows], net_input["prev_output_tokens"][rows]
            )
        logprobs = F.log_softmax(logits.float(), dim=-1)
        exit_nll = -logprobs.gather(-1, target[rows].unsqueeze(-1)).squeeze(-1)[live_copies]
        exits = extra["exits"][live_copies]
        reward = self._rewards(exit_nll.detach(), exits, memorized, decoder.num_layers)
        exit_logits = torch.stack(
            [rule.exit_logits(decoder, i, extra["inner_states"][i].transpose(0, 1)[live_copies])
             for i in range(1, decoder.num_layers)]
        )  # fmt: skip
        loss = exit_nll.sum() + reinforce_loss(reward, policy_log_probs(exit_logits, exits, rule.min_layer), samples)
        return loss, int(reward.numel()), self._logs(loss, sample, reward, exit_nll.detach(), exits, memorized, samples)
