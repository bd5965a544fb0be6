"""CALM's meta classifier, trained with the backbone frozen (docs/design.md section 7).

The confidence rule's ``classifier`` measure reads one ``Linear(d, 2)`` shared
by the decoder's layers: the probability that layer ``i``'s top prediction is
already the top layer's. CALM trains it after the backbone (and its multi-exit
heads), on the states the model computes at inference: labels are
``argmax p_i == argmax p_L`` at every non-pad target position and layer below
the top, the loss is class-balanced cross-entropy (each class weighted by the
inverse of its share in the batch), and nothing but the classifier is updated
(the backbone runs without gradients, in eval mode, every layer).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from fairseq.criterions import register_criterion
from fairseq.dataclass import FairseqDataclass

from ..errors import HashEEError
from ..exits.rules import every_layer_in_eval
from .frozen_backbone import FrozenBackboneCriterion
from .multi_exit import check_exit_heads, layer_logits

NAME = "calm_exit_classifier"


@dataclass
class CalmExitClassifierConfig(FairseqDataclass):
    pass


@register_criterion(NAME, dataclass=CalmExitClassifierConfig)
class CalmExitClassifierCriterion(FrozenBackboneCriterion):
    METRICS = {
        "loss": ("loss", 1.0, 3),
        "accuracy": ("n_correct", 100.0, 2),
        # share of (position, layer) pairs whose prediction is already the top layer's
        "consistent": ("n_consistent", 100.0, 2),
    }

    def forward(self, model, sample, reduce=True):
        check_exit_heads(model, NAME)
        decoder = model.decoder
        classifier = getattr(decoder.exit_rule, "meta_classifier", None)
        if classifier is None:
            raise HashEEError(
                f"--criterion {NAME} trains the classifier of --decoder-exit-rule confidence "
                "--exit-confidence classifier, which this model does not have"
            )
        live = sample["target"].ne(self.padding_idx)
        with torch.no_grad(), every_layer_in_eval(model):
            net_output = model(**sample["net_input"])
            top = net_output[0].argmax(dim=-1)
            states, labels = [], []
            for layer in range(1, decoder.num_layers):
                states.append(net_output[1]["inner_states"][layer].transpose(0, 1)[live])
                labels.append(layer_logits(model, net_output, layer).argmax(dim=-1)[live] == top[live])
        states, labels = torch.cat(states), torch.cat(labels).long()
        counts = torch.bincount(labels, minlength=2).clamp(min=1).to(states.dtype)
        balance = labels.numel() / (2.0 * counts)
        logits = classifier(states)
        loss = F.cross_entropy(logits.float(), labels, weight=balance.float(), reduction="sum")
        sample_size = labels.numel()
        logging_output = {
            "loss": loss.data,
            "sample_size": sample_size,
            "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0),
            "n_correct": (logits.argmax(dim=-1) == labels).sum().item(),
            "n_consistent": labels.sum().item(),
        }
        return loss, sample_size, logging_output
