"""What the criterions that train exit parameters on a frozen backbone share: their logs.

CALM's classifier, DAT's halting classifiers and ConsistentEE's policies each
learn from the states a trained multi-exit model computes, and each reports a
few per-sample means; a criterion names them in ``METRICS`` as
``log name -> (summed key, scale, decimals)``.
"""

from typing import Dict, Tuple

from fairseq.criterions import FairseqCriterion
from fairseq.logging import metrics


class FrozenBackboneCriterion(FairseqCriterion):
    METRICS: Dict[str, Tuple[str, float, int]] = {"loss": ("loss", 1.0, 3)}

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        sample_size = max(total("sample_size"), 1)
        for name, (key, scale, decimals) in cls.METRICS.items():
            metrics.log_scalar(name, scale * total(key) / sample_size, sample_size, round=decimals)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
