"""DAT's halting classifiers, trained on oracle exits with the backbone frozen (exits/dat.py).

From a multi-exit model, each target position's oracle exit is the layer
whose head scores the reference token best, penalised toward shallow layers
(``--dat-oracle-penalty``), the scores optionally smoothed along the
sentence's target positions first (``--dat-oracle-smoothing``, exits/dat.py).
``dat-multinomial`` learns it as a class from the state after layer 1
(cross-entropy); ``dat-halting`` as a sequence of halt/continue decisions: at
every layer ``i`` below the top with ``i <= e*``, halt exactly at ``i = e*``
(binary cross-entropy), the likelihood of the oracle under the geometric-like
halting distribution. States are the ones
the model computes at inference (eval mode, every layer run), and nothing but
the classifiers is updated.
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fairseq.criterions import register_criterion
from fairseq.dataclass import FairseqDataclass

from ..errors import HashEEError
from ..exits.dat import HaltingRule, MultinomialRule, oracle_exits, smooth_along_positions
from ..exits.rules import every_layer_in_eval
from .frozen_backbone import FrozenBackboneCriterion
from .multi_exit import check_exit_heads, layer_logits

NAME = "dat_exit_classifier"


@dataclass
class DatExitClassifierConfig(FairseqDataclass):
    dat_oracle_penalty: float = field(
        default=0.1,
        metadata={"help": "oracle exit = argmax_i log p_i(reference) - penalty * i: larger exits earlier"},
    )
    dat_oracle_smoothing: float = field(
        default=0.0,
        metadata={
            "help": "sigma of DAT's smoothed oracle: layer i's score at target position t is "
            "sum_t' exp(-|t - t'| / sigma) log p_i(reference at t') over the sentence; 0: no smoothing "
            "(the paper's smoothed oracle: 1)"
        },
    )


@register_criterion(NAME, dataclass=DatExitClassifierConfig)
class DatExitClassifierCriterion(FrozenBackboneCriterion):
    METRICS = {
        "loss": ("loss", 1.0, 3),
        "oracle_exit": ("oracle_exit_sum", 1.0, 2),
        "correct": ("n_correct", 100.0, 2),
    }

    def __init__(self, task, dat_oracle_penalty=0.1, dat_oracle_smoothing=0.0):
        super().__init__(task)
        if dat_oracle_penalty < 0:
            raise HashEEError(f"--dat-oracle-penalty: must be >= 0, got {dat_oracle_penalty}")
        if dat_oracle_smoothing < 0:
            raise HashEEError(f"--dat-oracle-smoothing: must be >= 0, got {dat_oracle_smoothing}")
        self.penalty = dat_oracle_penalty
        self.smoothing = dat_oracle_smoothing

    def forward(self, model, sample, reduce=True):
        check_exit_heads(model, NAME)
        decoder = model.decoder
        rule = decoder.exit_rule
        if not isinstance(rule, (HaltingRule, MultinomialRule)):
            raise HashEEError(
                f"--criterion {NAME} trains DAT's halting classifiers: the model needs "
                "--decoder-exit-rule dat-halting or dat-multinomial"
            )
        target = sample["target"]
        live = target.ne(self.padding_idx)
        num_layers = decoder.num_layers
        with torch.no_grad(), every_layer_in_eval(model):
            net_output = model(**sample["net_input"])
            scores = torch.stack(
                [
                    F.log_softmax(layer_logits(model, net_output, layer).float(), dim=-1)
                    .gather(-1, target.unsqueeze(-1))
                    .squeeze(-1)
                    for layer in range(1, num_layers + 1)
                ]
            )
            oracle = oracle_exits(smooth_along_positions(scores, live, self.smoothing)[:, live], self.penalty)
            states = [None] + [net_output[1]["inner_states"][i].transpose(0, 1)[live] for i in range(1, num_layers)]
        if isinstance(rule, MultinomialRule):
            logits = rule.exit_layer_classifier(states[1])
            loss = F.cross_entropy(logits.float(), oracle - 1, reduction="sum")
            correct = (logits.argmax(dim=-1) + 1 == oracle).sum()
        else:
            loss, correct = 0.0, 0
            for layer in range(1, num_layers):
                reached = oracle >= layer
                logits = rule.halting_logits(layer, states[layer][reached])
                halt = (oracle[reached] == layer).float()
                loss = loss + F.binary_cross_entropy_with_logits(logits.float(), halt, reduction="sum")
                correct = correct + ((logits > 0).float() == halt).sum()
        sample_size = int(oracle.numel())
        logging_output = {
            "loss": loss.data,
            "sample_size": sample_size,
            "ntokens": sample["ntokens"],
            "nsentences": target.size(0),
            "n_correct": int(correct),
            "oracle_exit_sum": int(oracle.sum()),
        }
        return loss, sample_size, logging_output
