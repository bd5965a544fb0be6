"""CALM's meta classifier, trained with the backbone frozen (docs/design.md section 7).

The confidence rule's ``classifier`` measure reads one ``Linear(d, 2)`` shared
by the decoder's layers: the probability that layer ``i``'s top prediction is
already the top layer's. CALM trains it after the backbone (and its multi-exit
heads), on the states the model computes at inference: labels are
``argmax p_i == argmax p_L`` at every non-pad target position and layer below
the top, and nothing but the classifier is updated (the backbone runs without
gradients, in eval mode, every layer).

The loss balances the classes within each layer, as CALM's code does (t5x
``t5x/contrib/calm/models.py``, ``loss_fn_meta_cls``): at layer ``i`` with
``P_i`` positive and ``N_i`` negative labels, a positive weighs
``N_i / (P_i + N_i)`` and a negative ``P_i / (P_i + N_i)``, and the layers'
weighted cross-entropies are averaged. A layer whose labels are all of one
class weighs nothing: it has nothing to separate. Pooling the counts over the
layers instead would let the deep layers, mostly consistent with the top,
decide the weights of the shallow ones, mostly not.
"""

from dataclasses import dataclass
from typing import List

import torch
import torch.nn.functional as F
from fairseq.criterions import register_criterion
from fairseq.dataclass import FairseqDataclass
from torch import Tensor

from ..errors import HashEEError
from ..exits.rules import every_layer_in_eval
from .frozen_backbone import FrozenBackboneCriterion
from .multi_exit import check_exit_heads, layer_logits

NAME = "calm_exit_classifier"


@dataclass
class CalmExitClassifierConfig(FairseqDataclass):
    pass


def balanced_layer_loss(logits: List[Tensor], labels: List[Tensor]) -> Tensor:
    """The sum over layers of each layer's class-balanced cross-entropy sum, from the classifier's
    ``logits`` (N, 2) and the consistency ``labels`` (N,) of every layer below the top; divided by
    the N (L-1) position-layer pairs it is the mean over layers of the per-position loss."""
    total = 0.0
    for scores, targets in zip(logits, labels):
        positives = targets.sum().float()
        share = positives / max(targets.numel(), 1)
        weight = torch.stack([share, 1.0 - share])  # class 0 (inconsistent), class 1 (consistent)
        per_position = F.cross_entropy(scores.float(), targets, reduction="none")
        total = total + (weight[targets] * per_position).sum()
    return total


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
        labels = [layer_labels.long() for layer_labels in labels]
        logits = [classifier(layer_states) for layer_states in states]
        loss = balanced_layer_loss(logits, labels)
        logits, labels = torch.cat(logits), torch.cat(labels)
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
