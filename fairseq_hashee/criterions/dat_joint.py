"""DAT's joint training: the decoder's every-layer loss plus alpha times the exit loss (the paper's eq. 7).

Elbayad et al. train the halting classifiers only jointly with the model:

    L = L_dec + alpha * L_exit

``L_dec`` the aligned training's loss over every exit (multi_exit.py, uniform
weights by default, as the paper's), ``L_exit`` the cross-entropy of the
oracle exits under the classifiers' exit distribution (dat_exit_classifier.py),
summed over the target positions as ``L_dec`` is. The oracle is recomputed
from the heads of the model being trained at every batch (a constant target:
no gradient through it), and the exit loss is back-propagated into the
decoder (and encoder) through the states the classifiers read, as the paper
says. Its schedule, "first without exit prediction (alpha = 0) using the
aligned mode, then with alpha != 0 until convergence", is two runs here: the
multi-exit stage, then this criterion restoring it.
"""

from dataclasses import dataclass, field

from fairseq.criterions import register_criterion
from fairseq.dataclass import ChoiceEnum
from fairseq.logging import metrics

from ..errors import HashEEError
from ..exits.dat import Oracle
from .dat_exit_classifier import DatOracleConfig, dat_rule, exit_loss, live_states
from .multi_exit import WEIGHTINGS, MultiExitCriterionConfig, MultiExitLabelSmoothedCrossEntropyCriterion

NAME = "dat_joint"


@dataclass
class DatJointConfig(MultiExitCriterionConfig, DatOracleConfig):
    exit_loss_weights: ChoiceEnum(WEIGHTINGS) = field(
        default="uniform", metadata={"help": "weight of layer i's loss: 1 ('uniform', DAT's aligned training) or i"}
    )
    dat_exit_alpha: float = field(
        default=1.0,
        metadata={"help": "alpha of L_dec + alpha * L_exit (the paper does not give its value); 0: L_dec alone"},
    )


@register_criterion(NAME, dataclass=DatJointConfig)
class DatJointCriterion(MultiExitLabelSmoothedCrossEntropyCriterion):
    name = NAME

    def __init__(
        self,
        task,
        sentence_avg,
        label_smoothing,
        ignore_prefix_size=0,
        report_accuracy=False,
        exit_loss_weights="uniform",
        dat_oracle="likelihood",
        dat_oracle_penalty=0.1,
        dat_oracle_smoothing=0.0,
        dat_exit_alpha=1.0,
    ):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy, exit_loss_weights)
        self.oracle = Oracle(str(dat_oracle), dat_oracle_penalty, dat_oracle_smoothing)
        if not dat_exit_alpha >= 0:
            raise HashEEError(f"--dat-exit-alpha: must be >= 0, got {dat_exit_alpha}")
        self.alpha = dat_exit_alpha

    def forward(self, model, sample, reduce=True):
        rule = dat_rule(model, NAME)  # before every_layer sets it aside in validation
        net_output = self.every_layer(model, sample)
        logits = self.every_layer_logits(model, net_output)
        dec_loss, sample_size, logging_output = self.exit_losses(model, net_output, logits, sample, reduce)
        live = sample["target"].ne(self.padding_idx)
        oracle = self.oracle.exits(logits, sample["target"], live)
        exit_nll, correct, decisions = exit_loss(rule, live_states(net_output, live), oracle, model.decoder.num_layers)
        loss = dec_loss + self.alpha * exit_nll
        logging_output.update(
            loss=loss.data,
            exit_loss=exit_nll.data,
            exit_positions=int(oracle.numel()),
            exit_decisions=decisions,
            n_exit_correct=correct,
            oracle_exit_sum=int(oracle.sum()),
        )
        return loss, sample_size, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)

        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        positions = max(total("exit_positions"), 1)
        metrics.log_scalar("exit_loss", total("exit_loss") / positions, positions, round=3)
        metrics.log_scalar("oracle_exit", total("oracle_exit_sum") / positions, positions, round=2)
        decisions = max(total("exit_decisions"), 1)  # share of the classifiers' decisions the oracle agrees with
        metrics.log_scalar("exit_correct", 100.0 * total("n_exit_correct") / decisions, decisions, round=2)
