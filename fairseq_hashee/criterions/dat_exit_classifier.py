"""DAT's halting classifiers, trained on oracle exits with the backbone frozen (exits/dat.py).

From a multi-exit model, each target position's oracle exit is the layer
whose head does best on the reference token (``--dat-oracle``: its
log-probability or whether it is the top prediction), penalised toward
shallow layers (``--dat-oracle-penalty``), the scores optionally smoothed
along the sentence's target positions first (``--dat-oracle-smoothing``).
``dat-multinomial`` learns it as a class from the state after layer 1
(cross-entropy); ``dat-halting`` as a sequence of halt/continue decisions: at
every layer ``i`` below the top with ``i <= e*``, halt exactly at ``i = e*``
(binary cross-entropy), the likelihood of the oracle under the geometric-like
halting distribution (the paper's eq. 6 with eq. 13). Here the states are the
ones the model computes at inference (eval mode, every layer run), and nothing
but the classifiers is updated; ``dat_joint`` (dat_joint.py) trains the same
loss with the decoder, as the paper does.
"""

from dataclasses import dataclass, field
from typing import Callable, Tuple

import torch
import torch.nn.functional as F
from fairseq.criterions import register_criterion
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from torch import Tensor

from ..errors import HashEEError
from ..exits.dat import ORACLES, HaltingRule, MultinomialRule, Oracle
from ..exits.rules import ExitRule, every_layer_in_eval
from .frozen_backbone import FrozenBackboneCriterion
from .multi_exit import check_exit_heads, layer_logits

NAME = "dat_exit_classifier"


@dataclass
class DatOracleConfig(FairseqDataclass):
    dat_oracle: ChoiceEnum(ORACLES) = field(
        default="likelihood",
        metadata={"help": "score of layer i at a target position: log p_i(reference) (likelihood) or 1 where "
                  "the reference is layer i's top prediction (correctness, the paper's best trade-off)"},
    )  # fmt: skip
    dat_oracle_penalty: float = field(
        default=0.1,
        metadata={"help": "oracle exit = argmax_i score_i - penalty * i: larger exits earlier"},
    )
    dat_oracle_smoothing: float = field(
        default=0.0,
        metadata={
            "help": "sigma of DAT's smoothed oracle (the paper's eq. 15): layer i's score at target position t is "
            "sum_t' exp(-|t - t'|^2 / sigma) score_i(t') over the sentence; 0: no smoothing"
        },
    )


def dat_rule(model, criterion: str) -> ExitRule:
    """The model's DAT rule, or one error line naming ``criterion``."""
    check_exit_heads(model, criterion)
    rule = model.decoder.exit_rule
    if not isinstance(rule, (HaltingRule, MultinomialRule)):
        raise HashEEError(
            f"--criterion {criterion} trains DAT's halting classifiers: the model needs "
            "--decoder-exit-rule dat-halting or dat-multinomial"
        )
    return rule


def exit_loss(
    rule: ExitRule, states: Callable[[int], Tensor], oracle: Tensor, num_layers: int
) -> Tuple[Tensor, int, int]:
    """The cross-entropy of the oracle exits ``oracle`` (N,) under the rule's exit distribution (summed
    over the positions), and how many of the rule's decisions there were and agree with the oracle
    (one per position for the multinomial, one per layer below the exit and the top for halting);
    ``states(i)`` are the positions' states (N, C) after layer ``i``."""
    if isinstance(rule, MultinomialRule):
        logits = rule.exit_layer_classifier(states(1))
        loss = F.cross_entropy(logits.float(), oracle - 1, reduction="sum")
        return loss, int((logits.argmax(dim=-1) + 1 == oracle).sum()), int(oracle.numel())
    loss, correct, decisions = oracle.new_zeros((), dtype=torch.float), 0, 0
    for layer in range(1, num_layers):
        reached = oracle >= layer
        logits = rule.halting_logits(layer, states(layer)[reached])
        halt = (oracle[reached] == layer).float()
        loss = loss + F.binary_cross_entropy_with_logits(logits.float(), halt, reduction="sum")
        correct += int(((logits > 0).float() == halt).sum())
        decisions += int(halt.numel())
    return loss, correct, decisions


def live_states(net_output, live: Tensor) -> Callable[[int], Tensor]:
    """Layer ``i``'s states (N, C) of the live target positions of a forward's inner states."""
    return lambda layer: net_output[1]["inner_states"][layer].transpose(0, 1)[live]


@register_criterion(NAME, dataclass=DatOracleConfig)
class DatExitClassifierCriterion(FrozenBackboneCriterion):
    METRICS = {
        "loss": ("loss", 1.0, 3),
        "oracle_exit": ("oracle_exit_sum", 1.0, 2),
        "correct": ("n_correct", 100.0, 2, "n_decisions"),  # halting decides at every layer a position reaches
    }

    def __init__(self, task, dat_oracle="likelihood", dat_oracle_penalty=0.1, dat_oracle_smoothing=0.0):
        super().__init__(task)
        self.oracle = Oracle(str(dat_oracle), dat_oracle_penalty, dat_oracle_smoothing)

    def forward(self, model, sample, reduce=True):
        rule = dat_rule(model, NAME)
        target = sample["target"]
        live = target.ne(self.padding_idx)
        num_layers = model.decoder.num_layers
        with torch.no_grad(), every_layer_in_eval(model):
            net_output = model(**sample["net_input"])
            logits = (layer_logits(model, net_output, layer) for layer in range(1, num_layers + 1))
            oracle = self.oracle.exits(logits, target, live)
            states = [None] + [live_states(net_output, live)(i) for i in range(1, num_layers)]
        loss, correct, decisions = exit_loss(rule, lambda layer: states[layer], oracle, num_layers)
        sample_size = int(oracle.numel())
        logging_output = {
            "loss": loss.data,
            "sample_size": sample_size,
            "ntokens": sample["ntokens"],
            "nsentences": target.size(0),
            "n_correct": int(correct),
            "n_decisions": int(decisions),
            "oracle_exit_sum": int(oracle.sum()),
        }
        return loss, sample_size, logging_output
