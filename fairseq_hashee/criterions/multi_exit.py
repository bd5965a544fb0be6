"""Multi-exit training: fairseq's label-smoothed loss at every decoder layer (docs/design.md section 7).

A dynamic exit rule reads a layer's next-token distribution and emits it when
the position exits there, so every layer's head must predict the next token,
not only the top one's. Every layer runs for every position, in training (rules
do not fire while training) and in validation (the rule is set aside), and the loss is

    sum_i w_i * LS-CE(p_i, y) / sum_i w_i,    w_i = i (CALM's weights; --exit-loss-weights uniform: 1)

with each layer's loss in the logs (``loss_layer{i}``). The reported
``nll_loss``/``ppl`` are the top layer's, as for the model without exits.
Validating over every layer, as t5x validates CALM's backbone, keeps
``checkpoint_best.pt`` (where the exit methods' later stages start) the best
multi-exit model, not the best at the exits of whatever threshold the rule has.
"""

import contextlib
import math
from dataclasses import dataclass, field
from typing import List

from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
)
from fairseq.dataclass import ChoiceEnum
from fairseq.logging import metrics
from torch import Tensor

from ..errors import HashEEError
from ..exits.rules import every_layer_in_eval

NAME = "multi_exit_label_smoothed_cross_entropy"
WEIGHTINGS = ("layer", "uniform")


@dataclass
class MultiExitCriterionConfig(LabelSmoothedCrossEntropyCriterionConfig):
    exit_loss_weights: ChoiceEnum(WEIGHTINGS) = field(
        default="layer", metadata={"help": "weight of layer i's loss: i ('layer', CALM's) or 1 ('uniform')"}
    )


def layer_logits(model, net_output, layer: int):
    """Decoder layer ``layer``'s next-token logits (B, T, V) from a forward's inner states."""
    decoder = model.decoder
    if layer == decoder.num_layers:
        return net_output[0]
    return decoder.exit_heads.logits(decoder, layer, net_output[1]["inner_states"][layer].transpose(0, 1))


def logged_sample(logging_output: dict, sample, loss, nll_loss, sentence_avg: bool):
    """Add what fairseq logs of every sample (``nll_loss`` the top layer's) to ``logging_output``;
    returns the sample size the loss is divided by."""
    sample_size = sample["target"].size(0) if sentence_avg else sample["ntokens"]
    logging_output.update(
        loss=loss.data,
        nll_loss=nll_loss.data,
        ntokens=sample["ntokens"],
        nsentences=sample["target"].size(0),
        sample_size=sample_size,
    )
    return sample_size


def check_exit_heads(model, criterion: str) -> None:
    if not hasattr(getattr(model, "decoder", None), "exit_heads"):
        raise HashEEError(f"--criterion {criterion} needs a HashEE model (--arch hashee_bart_base, ...)")


@register_criterion(NAME, dataclass=MultiExitCriterionConfig)
class MultiExitLabelSmoothedCrossEntropyCriterion(LabelSmoothedCrossEntropyCriterion):
    name = NAME

    def __init__(
        self,
        task,
        sentence_avg,
        label_smoothing,
        ignore_prefix_size=0,
        report_accuracy=False,
        exit_loss_weights="layer",
    ):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        self.exit_loss_weights = exit_loss_weights

    def forward(self, model, sample, reduce=True):
        net_output = self.every_layer(model, sample)
        return self.exit_losses(model, net_output, self.every_layer_logits(model, net_output), sample, reduce)

    def every_layer(self, model, sample):
        """The forward every layer's loss reads: every layer run for every position, in training and in
        validation (the rule set aside)."""
        check_exit_heads(model, self.name)
        if model.decoder.exit_heads.kind == "search":
            raise HashEEError(
                f"--criterion {self.name} trains chosen exit heads: a model with "
                "--exit-heads search trains with --criterion leco_head_search (then --exit-heads searched)"
            )
        with contextlib.nullcontext() if model.training else every_layer_in_eval(model):
            return model(**sample["net_input"])

    @staticmethod
    def every_layer_logits(model, net_output) -> List[Tensor]:
        """Each layer's next-token logits (B, T, V), layers 1..L."""
        return [layer_logits(model, net_output, layer) for layer in range(1, model.decoder.num_layers + 1)]

    def exit_losses(self, model, net_output, logits: List[Tensor], sample, reduce=True):
        """``sum_i w_i LS-CE(p_i, y) / sum_i w_i`` from each layer's ``logits``, fairseq's criterion triple."""
        num_layers = model.decoder.num_layers
        weights = [float(i) if self.exit_loss_weights == "layer" else 1.0 for i in range(1, num_layers + 1)]
        loss, logging_output = 0.0, {}
        for layer, (weight, layer_output) in enumerate(zip(weights, logits), start=1):
            layer_loss, nll_loss = self.compute_loss(model, (layer_output, net_output[1]), sample, reduce=reduce)
            loss = loss + weight * layer_loss
            logging_output[f"loss_layer{layer}"] = layer_loss.data
        loss = loss / sum(weights)
        sample_size = logged_sample(logging_output, sample, loss, nll_loss, self.sentence_avg)
        if self.report_accuracy:
            n_correct, total = self.compute_accuracy(model, net_output, sample)
            logging_output.update(n_correct=n_correct.item(), total=total.item())
        return loss, sample_size, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        keys = sorted(
            {k for log in logging_outputs for k in log if k.startswith("loss_layer")},
            key=lambda k: int(k[len("loss_layer") :]),
        )
        for key in keys:
            total = sum(log.get(key, 0) for log in logging_outputs)
            metrics.log_scalar(key, total / sample_size / math.log(2), sample_size, round=3)
