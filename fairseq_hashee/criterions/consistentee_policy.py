"""ConsistentEE's stage 2: the exit policies alone, by REINFORCE, the backbone frozen (exits/consistentee.py).

Per batch, with the backbone in eval mode and without gradients:

1. every layer runs for every position (as the multi-exit model computes at
   inference with no exits): each target position's *memorized layer* ``m``,
   the shallowest layer from which every deeper head predicts the reference
   (``L`` when the top head is wrong);
2. the decoder runs on ``K`` copies of the batch (``--consistentee-samples``;
   the encoder once) with the exit rule deciding, each position exiting at
   layer ``i`` with probability ``p_i`` from its policy. Exited positions are
   frozen as at inference, so later positions attend to their frozen states;
3. a copy of a position exiting at ``e`` earns
   ``r = -CE(p_e, y) - alpha * e * (1 - m / L)`` (``--consistentee-alpha``),
   and the loss is ``-(r - b) log pi`` summed over copies and positions, ``b``
   the position's mean reward over its ``K`` copies; only ``log pi`` (the
   policies' continue/exit probabilities on the states of step 2) carries a
   gradient.

``m`` is computed per batch from the frozen model: the authors compute it once,
after stage 1, from the final stage-1 model in eval mode on the training set,
and since stage 2 changes nothing the layers read, recomputing it per batch
gives the same values for every position without keeping a table keyed by
sample and position (step 1 is one forward without gradients).

Validation decodes once with the inference rule (exit when ``p_i`` reaches
``--exit-threshold``) and reports ``loss = -mean reward``, what the policies
maximise, so fairseq's best checkpoint is the best policy; its speed-up report
is that decoding's (step 1 is not counted).
"""

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fairseq.criterions import register_criterion
from fairseq.dataclass import FairseqDataclass

from ..errors import HashEEError
from ..exits.consistentee import (
    ConsistentEERule,
    memorized_layers,
    policy_log_probs,
    reinforce_loss,
    rewards,
    sampling_exits,
)
from ..exits.rules import every_layer_in_eval
from .frozen_backbone import FrozenBackboneCriterion
from .multi_exit import check_exit_heads, layer_logits

NAME = "consistentee_policy"


@dataclass
class ConsistentEEPolicyConfig(FairseqDataclass):
    consistentee_alpha: float = field(
        default=0.01,
        metadata={"help": "reward = -CE at the exit layer - alpha * exit layer * (1 - memorized layer / L): "
                  "larger exits earlier"},
    )  # fmt: skip
    consistentee_samples: int = field(
        default=4, metadata={"help": "K: each batch is decoded K times with sampled exits; baseline = mean reward"}
    )


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

    def __init__(self, task, consistentee_alpha=0.01, consistentee_samples=4):
        super().__init__(task)
        if not consistentee_alpha >= 0:
            raise HashEEError(f"--consistentee-alpha: must be >= 0, got {consistentee_alpha}")
        if consistentee_samples < 2:
            raise HashEEError(
                f"--consistentee-samples: must be >= 2 (the baseline is the mean reward over the copies), "
                f"got {consistentee_samples}"
            )
        self.alpha = consistentee_alpha
        self.samples = consistentee_samples

    def forward(self, model, sample, reduce=True):
        check_exit_heads(model, NAME)
        decoder = model.decoder
        rule = decoder.exit_rule
        if not isinstance(rule, ConsistentEERule):
            raise HashEEError(
                f"--criterion {NAME} trains the exit policies of --decoder-exit-rule consistentee, "
                "which this model does not have"
            )
        if not decoder.no_early_exits:
            raise HashEEError(
                f"--criterion {NAME}: decoder hash exits (--decoder-exits, --decoder-hash-table) cannot be "
                "combined with the consistentee rule's training; keep them for the encoder"
            )
        if decoder.num_layers < 2:
            raise HashEEError(f"--criterion {NAME}: a decoder of one layer has no exit to learn")
        training = model.training
        samples = self.samples if training else 1
        net_input, target = sample["net_input"], sample["target"]
        live = target.ne(self.padding_idx)
        live_copies = live.repeat(samples, 1)  # copy k of sentence b is row k * B + b
        num_layers = decoder.num_layers

        with torch.no_grad():
            with every_layer_in_eval(model):
                encoder_out = model.encoder(net_input["src_tokens"], src_lengths=net_input["src_lengths"])
                with _not_measured(model):
                    full = decoder(net_input["prev_output_tokens"], encoder_out=encoder_out)
                    correct = torch.stack(
                        [layer_logits(model, full, i).argmax(dim=-1)[live] == target[live]
                         for i in range(1, num_layers + 1)]
                    )  # fmt: skip
                del full
            memorized = memorized_layers(correct)
            # Training samples exits from the policies; validation decides as at inference (eval mode already).
            with sampling_exits(model) if training else contextlib.nullcontext():
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
            reward = rewards(exit_nll, exits, memorized.repeat(samples), self.alpha, num_layers)

            if training:  # what the policies read of the states the sampled decoding computed
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
        sample_size = int(reward.numel())
        logging_output = {
            "loss": loss.data,
            "sample_size": sample_size,
            "ntokens": sample["ntokens"],
            "nsentences": target.size(0),
            "reward_sum": float(reward.sum()),
            "exit_nll_sum": float(exit_nll.sum()),
            "exit_layer_sum": int(exits.sum()),
            "memorized_layer_sum": int(memorized.sum()) * samples,
        }
        return loss, sample_size, logging_output
