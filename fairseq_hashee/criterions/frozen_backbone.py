"""What the criterions that train exit parameters on a frozen backbone share: their logs and the freezing.

CALM's classifier, DAT's halting classifiers and ConsistentEE's policies each
learn from the states a trained multi-exit model computes, and each reports a
few means; a criterion names them in ``METRICS`` as
``log name -> (summed key, scale, decimals[, summed denominator key])``, the
denominator ``sample_size`` unless a mean is over something else (DAT's
halting decisions, several per position).

Running the backbone without gradients is not enough to keep it fixed: under
``--fp16``/``--bf16`` fairseq's mixed-precision optimizer gives every
parameter that requires grad a zero gradient when it has none, and Adam's
weight decay then moves it. So ``freeze_backbone`` (called by the task when
it builds a model for training, before fairseq builds the optimizer) leaves
only the exit rule's parameters requiring grad, and the optimizer holds
nothing else.
"""

from typing import Dict, Optional, Tuple

from fairseq.criterions import CRITERION_REGISTRY, FairseqCriterion
from fairseq.logging import metrics


class FrozenBackboneCriterion(FairseqCriterion):
    METRICS: Dict[str, Tuple] = {"loss": ("loss", 1.0, 3)}
    frozen_backbone = True  # False: shares the logs only (ConsistentEE's joint stage trains every parameter)

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        sample_size = max(total("sample_size"), 1)
        for name, (key, scale, decimals, *over) in cls.METRICS.items():
            if any(key in log for log in logging_outputs):  # a metric some settings do not compute is not logged
                count = max(total(over[0]), 1) if over else sample_size
                metrics.log_scalar(name, scale * total(key) / count, count, round=decimals)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


def freeze_backbone(model, criterion: Optional[str]) -> None:
    """With ``--criterion criterion`` one of the frozen-backbone criterions, every parameter of
    ``model`` but its decoder exit rule's stops requiring grad. A rule without parameters is
    left to the criterion to refuse, with its own message, at its first forward."""
    criterion_class = CRITERION_REGISTRY.get(criterion)
    is_frozen = isinstance(criterion_class, type) and issubclass(criterion_class, FrozenBackboneCriterion)
    if not (is_frozen and criterion_class.frozen_backbone):
        return
    rule = getattr(model.decoder, "exit_rule", None)
    trained = {id(p) for p in rule.parameters()} if rule is not None else set()
    if not trained:
        return
    for parameter in model.parameters():
        if id(parameter) not in trained:
            parameter.requires_grad_(False)
