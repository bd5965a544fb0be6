"""LECO's exit-head search: differentiable architecture search over each layer's head (exits/heads.py).

With ``--exit-heads search`` every decoder layer below the top holds the
candidate heads of ``HEAD_ARCHS`` and a row of architecture weights
``alpha``; the layer's logits are the softmax(alpha)-weighted sum of the
candidates' logits (DARTS's continuous relaxation, Liu et al. 2019). The
search is bilevel, to first order (DARTS's first-order approximation): the
network's weights minimise the multi-exit loss (criterions/multi_exit.py) on
the training examples of each batch with ``alpha`` held fixed, and ``alpha``
minimises the exit layers' loss on the held-out examples with the network
held fixed.

Held out are the examples whose id falls in a fixed share of the ids
(``--head-search-holdout``, default half): a split of the training set, as
DARTS splits it, that does not depend on how a batch was put together
(fairseq batches examples of similar length, so the last rows of a batch
would always be its shortest sources).

``alpha`` has an optimizer of its own, DARTS's: Adam with learning rate
``--head-search-alpha-lr`` (3e-4), betas (0.5, 0.999) and weight decay 1e-3,
stepped by this criterion on each training batch's held-out loss (on an fp32
copy of ``alpha``, gradients averaged over workers). fairseq's optimizer
never sees ``alpha`` (it does not require grad), so ``--clip-norm``, the
network's learning rate and ``--weight-decay`` do not touch it. The step
comes before the network's (DARTS's order), once per batch, also within an
accumulated update (``--update-freq``); its Adam state is not checkpointed.

After the search, ``--exit-heads searched --restore-file <search>.pt`` keeps
``argmax alpha`` at every layer and trains on with those heads
(``--criterion multi_exit_label_smoothed_cross_entropy``); the choice is the
buffer ``decoder.exit_heads.choice`` of every later checkpoint.
"""

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.distributed as dist
from fairseq.criterions import register_criterion
from fairseq.logging import metrics
from torch import Tensor

from ..errors import HashEEError
from ..exits.heads import HEAD_ARCHS
from .multi_exit import MultiExitCriterionConfig, MultiExitLabelSmoothedCrossEntropyCriterion, check_exit_heads

NAME = "leco_head_search"
ID_BUCKETS = 1000  # held-out ids: those whose id modulo this is below holdout * this
# DARTS's architecture optimizer (Liu et al. 2019, appendix A.1.1), but for its learning rate.
ALPHA_BETAS, ALPHA_WEIGHT_DECAY = (0.5, 0.999), 1e-3


@dataclass
class LecoHeadSearchConfig(MultiExitCriterionConfig):
    head_search_holdout: float = field(
        default=0.5,
        metadata={"help": "share of the training examples (by id) held out to train the architecture weights alpha"},
    )
    head_search_alpha_lr: float = field(
        default=3e-4,
        metadata={"help": "learning rate of alpha's own Adam optimizer (DARTS's: 3e-4); --lr is the network's"},
    )


def held_out(ids: Tensor, share: float) -> Tensor:
    """Whether each example (by its dataset id, N) is held out: a fixed ``share`` of the ids."""
    return ids % ID_BUCKETS < round(share * ID_BUCKETS)


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
        head_search_alpha_lr=3e-4,
    ):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy, exit_loss_weights)
        if not 0.0 < head_search_holdout < 1.0:
            raise HashEEError(f"--head-search-holdout: expected a share in (0, 1), got {head_search_holdout}")
        if not head_search_alpha_lr > 0:
            raise HashEEError(f"--head-search-alpha-lr: must be > 0, got {head_search_alpha_lr}")
        self.holdout = head_search_holdout
        self.alpha_lr = float(head_search_alpha_lr)
        # alpha's fp32 copy and its optimizer, made at the first step (after any checkpoint was restored).
        # Plain attributes, not parameters: fairseq's optimizer must not see them.
        self._alpha: Optional[Tensor] = None
        self._alpha_optimizer: Optional[torch.optim.Optimizer] = None

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
        steps_alpha = model.training and torch.is_grad_enabled()
        alpha = heads.alpha.detach().float().requires_grad_(steps_alpha)
        net_output = model(**sample["net_input"])
        target = sample["target"]
        held_rows = held_out(sample["id"].to(target.device), self.holdout)
        train_rows = ~held_rows
        num_layers = decoder.num_layers
        weights = [float(i) if self.exit_loss_weights == "layer" else 1.0 for i in range(1, num_layers + 1)]
        weights_loss, arch_loss, logging_output = 0.0, 0.0, {}
        for layer, weight in enumerate(weights, start=1):
            if layer == num_layers:
                layer_loss, nll_loss = self._rows_loss(model, net_output[0], net_output[1], sample, train_rows)
            else:
                features = heads.features(decoder, net_output[1]["inner_states"][layer].transpose(0, 1))
                # The weights' loss: alpha fixed; alpha's: the candidates fixed (first-order DARTS).
                fixed_alpha, fixed_net = heads.search_logits(decoder, layer, features, alpha)
                layer_loss, _ = self._rows_loss(model, fixed_alpha, net_output[1], sample, train_rows)
                held_loss, _ = self._rows_loss(model, fixed_net, net_output[1], sample, held_rows)
                arch_loss = arch_loss + weight * held_loss
            weights_loss = weights_loss + weight * layer_loss
            logging_output[f"loss_layer{layer}"] = layer_loss.data
        held_tokens = int(target[held_rows].ne(self.padding_idx).sum())
        arch_loss = arch_loss / sum(weights)
        if steps_alpha:
            self._step_alpha(heads, alpha, arch_loss / max(held_tokens, 1))
        ntokens = int(target[train_rows].ne(self.padding_idx).sum())
        train_sentences = int(train_rows.sum())
        # A batch of held-out examples only trains nothing here: its zero loss over a size of 1.
        sample_size = max(train_sentences if self.sentence_avg else ntokens, 1)
        logging_output.update(
            loss=(weights_loss / sum(weights)).data,  # the training examples' multi-exit loss
            arch_loss=arch_loss.data,
            held_sample_size=int(held_rows.sum()) if self.sentence_avg else held_tokens,
            nll_loss=nll_loss.data,
            ntokens=ntokens,
            nsentences=train_sentences,
            sample_size=sample_size,
        )
        with torch.no_grad():
            for layer in range(1, num_layers):
                # the weight of each candidate, summed over the batches of a log interval as fairseq sums
                for arch, w in zip(HEAD_ARCHS, heads.mixture_weights(layer).tolist()):
                    logging_output[f"alpha{layer}_{arch}"] = w
        logging_output["n_logs"] = 1
        return weights_loss / sum(weights), sample_size, logging_output

    def _step_alpha(self, heads, alpha: Tensor, loss: Tensor) -> None:
        """One Adam step of alpha on the held-out loss (its gradient averaged over the workers, which
        all take the step, with or without held-out examples in their batch)."""
        (grad,) = torch.autograd.grad(loss, alpha) if loss.requires_grad else (torch.zeros_like(alpha),)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(grad)
            grad /= dist.get_world_size()
        if self._alpha is None or self._alpha.device != alpha.device:
            self._alpha = heads.alpha.detach().float().clone()
            self._alpha_optimizer = torch.optim.Adam(
                [self._alpha], lr=self.alpha_lr, betas=ALPHA_BETAS, weight_decay=ALPHA_WEIGHT_DECAY
            )
        self._alpha.grad = grad
        self._alpha_optimizer.step()
        with torch.no_grad():
            heads.alpha.copy_(self._alpha)

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        held = sum(log.get("held_sample_size", 0) for log in logging_outputs)
        arch = sum(float(log.get("arch_loss", 0)) for log in logging_outputs)
        metrics.log_scalar("arch_loss", arch / max(held, 1) / 0.6931471805599453, held, round=3)
        n_logs = max(sum(log.get("n_logs", 0) for log in logging_outputs), 1)
        for key in sorted({k for log in logging_outputs for k in log if k.startswith("alpha")}):
            metrics.log_scalar(key, sum(log.get(key, 0) for log in logging_outputs) / n_logs, n_logs, round=3)
