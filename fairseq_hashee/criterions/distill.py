"""Distilling the exits from a full-depth teacher: one of the training recipes for decoder hash exits.

A decoder position that exits at layer ``e`` is read through the head of layer
``e``; label-smoothed cross-entropy alone asks that head for the reference
token, which a shallow layer often cannot give. This criterion also asks it for
the teacher's next-token distribution (a frozen full-depth model, e.g. the
checkpoint the fine-tuning starts from), as FREE (Bae et al., EMNLP 2023)
distills its shallow exit from its deep one:

    loss = (1 - a) * LS-CE(p_exit, y) + a * KL(p_teacher || p_exit),   a = --distill-weight

summed over target tokens like fairseq's loss (docs/exit-methods.md, "Training
decoder hash exits"). The teacher is not a parameter of the criterion: it is
neither trained, nor saved in checkpoints, nor handed to the optimizer.
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fairseq import checkpoint_utils
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
)
from fairseq.logging import metrics

from ..checkpoints import load_checkpoint
from ..errors import HashEEError

NAME = "hashee_distill"


@dataclass
class DistillCriterionConfig(LabelSmoothedCrossEntropyCriterionConfig):
    distill_from: str = field(default="", metadata={"help": "the teacher: a full-depth checkpoint of the same model"})
    distill_weight: float = field(default=0.5, metadata={"help": "weight a of the teacher's KL term, 0..1"})


@register_criterion(NAME, dataclass=DistillCriterionConfig)
class DistillCriterion(LabelSmoothedCrossEntropyCriterion):
    def __init__(self, task, sentence_avg, label_smoothing, ignore_prefix_size=0, report_accuracy=False,
                 distill_from="", distill_weight=0.5):  # fmt: skip
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        if not distill_from:
            raise HashEEError(f"--criterion {NAME} needs --distill-from (the full-depth teacher's checkpoint)")
        if not 0.0 <= distill_weight <= 1.0:
            raise HashEEError(f"--distill-weight: must be in 0..1, got {distill_weight}")
        load_checkpoint(distill_from)  # one error line now for a missing or unreadable teacher
        self.distill_from, self.distill_weight = distill_from, distill_weight
        self._teacher = []  # a list, so that the teacher is no submodule

    def teacher(self, like: torch.Tensor):
        """The teacher, loaded at the first forward onto the student's device and dtype."""
        if not self._teacher:
            models, _ = checkpoint_utils.load_model_ensemble([self.distill_from], task=self.task)
            teacher = models[0].eval()
            for parameter in teacher.parameters():
                parameter.requires_grad_(False)
            self._teacher.append(teacher)
        return self._teacher[0].to(device=like.device, dtype=like.dtype)

    def forward(self, model, sample, reduce=True):
        net_output = model(**sample["net_input"])
        loss, nll_loss = self.compute_loss(model, net_output, sample, reduce=reduce)
        lprobs, target = self.get_lprobs_and_target(model, net_output, sample)
        with torch.no_grad():
            teacher = self.teacher(net_output[0])
            teacher_output = teacher(**sample["net_input"])
            teacher_lprobs, _ = self.get_lprobs_and_target(teacher, teacher_output, sample)
        live = target.ne(self.padding_idx)
        kl = F.kl_div(lprobs[live].float(), teacher_lprobs[live].float(), log_target=True, reduction="sum")
        total = (1.0 - self.distill_weight) * loss + self.distill_weight * kl
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logging_output = {
            "loss": total.data,
            "nll_loss": nll_loss.data,
            "distill_kl": kl.data,
            "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
        }
        return total, sample_size, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        kl = sum(log.get("distill_kl", 0) for log in logging_outputs)
        metrics.log_scalar("distill_kl", kl / max(sample_size, 1), sample_size, round=3)
