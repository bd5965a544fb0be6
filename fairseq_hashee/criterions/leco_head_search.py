"""LECO's exit-head search: differentiable architecture search over each layer's head (exits/heads.py).

With ``--exit-heads search`` every decoder layer below the top holds the
candidate heads of ``HEAD_ARCHS`` and a row of architecture weights
``alpha``; the layer's logits are the softmax(alpha)-weighted sum of the
candidates' logits (DARTS's continuous relaxation). The search is bilevel,
to first order (DARTS's first-order approximation): the network's weights
minimise the multi-exit loss (criterions/multi_exit.py) on the training
rows of each batch with ``alpha`` held fixed, and ``alpha`` minimises the
exit layers' loss on the batch's held-out rows (``--head-search-holdout``,
default half of the sentences) with the network held fixed. The two losses
touch disjoint parameters, so one backward and one optimizer step update
both; the held-out rows train nothing but ``alpha``. One optimizer means one
learning rate: the softmax reads ``alpha`` times ``--head-search-alpha-scale``
(100), which under Adam gives ``alpha`` that much larger steps.

After the search, ``--exit-heads searched --restore-file <search>.pt`` keeps
``argmax alpha`` at every layer and trains on with those heads
(``--criterion multi_exit_label_smoothed_cross_entropy``); the choice is the
buffer ``decoder.exit_heads.choice`` of every later checkpoint.
"""

from dataclasses import dataclass, field

import torch
from fairseq.criterions import register_criterion
from fairseq.logging import metrics

from ..errors import HashEEError
from ..exits.heads import HEAD_ARCHS
from .multi_exit import MultiExitCriterionConfig, MultiExitLabelSmoothedCrossEntropyCriterion, check_exit_heads

NAME = "leco_head_search"


@dataclass
class LecoHeadSearchConfig(MultiExitCriterionConfig):
    head_search_holdout: float = field(
        default=0.5,
        metadata={"help": "share of each batch's sentences held out to train the architecture weights alpha"},
    )
    head_search_alpha_scale: float = field(
        default=100.0,
        metadata={
            "help": "alpha's learning rate relative to the network's: the softmax reads alpha times this, so "
            "an Adam step of lr moves the softmax's logits by about lr * scale"
        },
    )


@register_criterion(NAME, dataclass=LecoHeadSearchConfig)
class LecoHeadSearchCriterion(MultiExitLabelSmoothedCrossEntropyCriterion):
    def __init__(
        self,
        task,
        sentence_avg,
        label_smoothing,
        ignore_prefix_size=0,
        report_accuracy=False,
        exit_loss_weights="layer",
        head_search_holdout=0.5,
        head_search_alpha_scale=100.0,
    ):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy, exit_loss_weights)
        if not 0.0 < head_search_holdout < 1.0:
            raise HashEEError(f"--head-search-holdout: expected a share in (0, 1), got {head_search_holdout}")
        if not head_search_alpha_scale > 0:
            raise HashEEError(f"--head-search-alpha-scale: must be > 0, got {head_search_alpha_scale}")
        self.holdout = head_search_holdout
        self.alpha_scale = float(head_search_alpha_scale)

    def _rows_loss(self, model, logits, extra, sample, rows):
        sub = {"target": sample["target"][rows]}
        return self.compute_loss(model, (logits[rows], extra), sub, reduce=True)

    def forward(self, model, sample, reduce=True):
        check_exit_heads(model, NAME)
        decoder = model.decoder
        heads = decoder.exit_heads
        if heads.kind != "search":
            raise HashEEError(
                f"--criterion {NAME} searches the exit heads' architectures: the model needs --exit-heads search "
                f"(it has --exit-heads {heads.kind})"
            )
        if float(heads.alpha_scale) != self.alpha_scale:
            heads.alpha_scale.fill_(self.alpha_scale)
        net_output = model(**sample["net_input"])
        target = sample["target"]
        bsz, num_layers = target.size(0), decoder.num_layers
        held = min(max(int(round(bsz * self.holdout)), 1), bsz - 1) if bsz > 1 else 0
        train_rows, held_rows = slice(0, bsz - held), slice(bsz - held, bsz)
        weights = [float(i) if self.exit_loss_weights == "layer" else 1.0 for i in range(1, num_layers + 1)]
        weights_loss, arch_loss, logging_output = 0.0, 0.0, {}
        for layer, weight in enumerate(weights, start=1):
            if layer == num_layers:
                logits = net_output[0]
                layer_loss, nll_loss = self._rows_loss(model, logits, net_output[1], sample, train_rows)
            else:
                features = heads.features(decoder, net_output[1]["inner_states"][layer].transpose(0, 1))
                # The weights' step: alpha fixed; alpha's step: the candidates fixed (first-order DARTS).
                fixed_alpha, fixed_net = heads.search_logits(decoder, layer, features)
                layer_loss, _ = self._rows_loss(model, fixed_alpha, net_output[1], sample, train_rows)
                if held:
                    held_loss, _ = self._rows_loss(model, fixed_net, net_output[1], sample, held_rows)
                    arch_loss = arch_loss + weight * held_loss
            weights_loss = weights_loss + weight * layer_loss
            logging_output[f"loss_layer{layer}"] = layer_loss.data
        loss = (weights_loss + arch_loss) / sum(weights)
        ntokens = int(target[train_rows].ne(self.padding_idx).sum())
        sample_size = bsz - held if self.sentence_avg else ntokens
        logging_output.update(
            loss=(weights_loss / sum(weights)).data,  # the training rows' multi-exit loss
            arch_loss=(arch_loss / sum(weights)).data if held else 0.0,
            held_sample_size=(held if self.sentence_avg else sample["ntokens"] - ntokens),
            nll_loss=nll_loss.data,
            ntokens=ntokens,
            nsentences=bsz - held,
            sample_size=sample_size,
        )
        with torch.no_grad():
            for layer in range(1, num_layers):
                # the weight of each candidate, summed over the batches of a log interval as fairseq sums
                for arch, w in zip(HEAD_ARCHS, heads.mixture_weights(layer).tolist()):
                    logging_output[f"alpha{layer}_{arch}"] = w
        logging_output["n_logs"] = 1
        return loss, sample_size, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        held = sum(log.get("held_sample_size", 0) for log in logging_outputs)
        arch = sum(float(log.get("arch_loss", 0)) for log in logging_outputs)
        metrics.log_scalar("arch_loss", arch / max(held, 1) / 0.6931471805599453, held, round=3)
        n_logs = max(sum(log.get("n_logs", 0) for log in logging_outputs), 1)
        for key in sorted({k for log in logging_outputs for k in log if k.startswith("alpha")}):
            metrics.log_scalar(key, sum(log.get(key, 0) for log in logging_outputs) / n_logs, n_logs, round=3)
