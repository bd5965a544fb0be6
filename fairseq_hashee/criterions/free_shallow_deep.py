"""FREE's training loss for its shallow-deep decoder (``shallowdeep_kd_dyna``, exits/free.py).

Read from the released code (``util/losses.py``, ``compute_intermediate_loss`` and
``compute_layerwise_distillation_loss``): the model trains both exits, each
weighted by its depth,

    L_ce = (S * CE(p_S, y) + L * CE(p_L, y)) / (S + L),

where ``p_i`` is the next-token distribution of layer ``i``'s state through the
output projection (the exit heads, exits/heads.py), and adds a layerwise
distillation of the shallow layers from the deep ones, weighted by
``--distill-layer-alpha`` (FREE's CNN/DM setting: 0.5):

    L = L_ce + alpha * L_kd.

``L_kd`` aligns each of ``S`` deep (teacher) layers, ``ceil(k L / S)`` for
k = 1..S (the released table where S divides L), with one of the shallow
(student) layers 1..S, dynamically: ``M[k, s]`` is the mean squared error
between teacher k's states (detached) and student s's, and from the last
teacher down each takes the student of smallest error among those below the
student the teacher above took (the first takes any; one with none below takes
the same as the teacher above); ``L_kd`` is the mean of the chosen errors.
States are taken as the heads read them (``ExitHeads.features``: after the
decoder's final norm where it has one), as the released code distils the
normalised states it projects.

Deviations: the cross-entropies are fairseq's label-smoothed ones with this
criterion's ``--label-smoothing`` (0, the default, is the released plain
cross-entropy); the squared errors are averaged over target positions only,
not over padding (the released code averages the padded batch); no learned
layer transformation (``do_layer_transformation`` False in the released
CNN/DM command).
"""

import contextlib
import math
from dataclasses import dataclass, field
from typing import List, Sequence

import torch
import torch.nn.functional as F
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
)
from fairseq.logging import metrics
from torch import Tensor

from ..errors import HashEEError
from ..exits.free import ShallowDeepRule
from ..exits.rules import every_layer_in_eval
from .multi_exit import check_exit_heads, layer_logits, logged_sample

NAME = "free_shallow_deep"


@dataclass
class FreeShallowDeepConfig(LabelSmoothedCrossEntropyCriterionConfig):
    distill_layer_alpha: float = field(
        default=0.5,
        metadata={"help": "weight of FREE's layerwise distillation of the shallow layers from the deep ones (0: none)"},
    )


def teacher_layers(num_layers: int, shallow_layer: int) -> List[int]:
    """The deep layers (1-based) the ``shallow_layer`` shallow ones are aligned with: ``ceil(k L / S)``."""
    return [math.ceil(k * num_layers / shallow_layer) for k in range(1, shallow_layer + 1)]


def dynamic_alignment(errors: Tensor) -> List[int]:
    """The student (0-based column) each teacher (row) of the squared errors (K, S) is aligned with."""
    chosen, below = [0] * errors.size(0), errors.size(1)
    for teacher in range(errors.size(0) - 1, -1, -1):
        candidates = [s for s in errors[teacher].argsort().tolist() if s < below]
        below = candidates[0] if candidates else below
        chosen[teacher] = below
    return chosen


def layerwise_distillation(teachers: Sequence[Tensor], students: Sequence[Tensor]) -> Tensor:
    """FREE's dynamic layerwise distillation loss from the teachers' and students' states (N, C)."""
    errors = torch.stack([torch.stack([F.mse_loss(s, t.detach()) for s in students]) for t in teachers])
    chosen = dynamic_alignment(errors.detach())
    return errors[torch.arange(len(teachers)), torch.tensor(chosen)].mean()


@register_criterion(NAME, dataclass=FreeShallowDeepConfig)
class FreeShallowDeepCriterion(LabelSmoothedCrossEntropyCriterion):
    def __init__(
        self, task, sentence_avg, label_smoothing, ignore_prefix_size=0, report_accuracy=False, distill_layer_alpha=0.5
    ):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        if distill_layer_alpha < 0:
            raise HashEEError(f"--distill-layer-alpha: must be >= 0, got {distill_layer_alpha}")
        self.distill_layer_alpha = distill_layer_alpha

    def forward(self, model, sample, reduce=True):
        check_exit_heads(model, NAME)
        decoder = model.decoder
        rule = decoder.exit_rule
        if not isinstance(rule, ShallowDeepRule):
            raise HashEEError(
                f"--criterion {NAME} trains FREE's shallow-deep decoder: build it with --decoder-exit-rule free"
            )
        shallow, deep = rule.shallow_layer, decoder.num_layers
        with contextlib.nullcontext() if model.training else every_layer_in_eval(model):
            net_output = model(**sample["net_input"])
        losses = {}
        for name, layer in (("shallow", shallow), ("deep", deep)):
            logits = layer_logits(model, net_output, layer)
            losses[name], nll_loss = self.compute_loss(model, (logits, net_output[1]), sample, reduce=reduce)
        loss = (shallow * losses["shallow"] + deep * losses["deep"]) / (shallow + deep)
        logging_output = {"loss_shallow": losses["shallow"].data, "loss_deep": losses["deep"].data}
        if self.distill_layer_alpha > 0:
            live = sample["target"].ne(self.padding_idx).t()  # (T, B), as the states
            states = [decoder.exit_heads.features(decoder, h[live]) for h in net_output[1]["inner_states"]]
            distill = layerwise_distillation(
                [states[layer] for layer in teacher_layers(deep, shallow)], states[1 : shallow + 1]
            )
            per = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
            # Per token (or sentence) like the summed cross-entropies, so the weight means what FREE's does.
            loss = loss + self.distill_layer_alpha * distill * per
            logging_output["loss_distill"] = distill.data * per
        sample_size = logged_sample(logging_output, sample, loss, nll_loss, self.sentence_avg)
        return loss, sample_size, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        for key in ("loss_shallow", "loss_deep", "loss_distill"):
            if any(key in log for log in logging_outputs):
                total = sum(log.get(key, 0) for log in logging_outputs)
                metrics.log_scalar(key, total / sample_size / math.log(2), sample_size, round=3)
