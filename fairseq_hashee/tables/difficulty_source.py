"""Where a difficulty table's statistics come from: a multi-exit checkpoint reading a split teacher-forced.

The checkpoint is checked before anything is read (its criterion trained exit
heads, its decoder has the table's depth, its dictionary the data's size), so a
wrong one costs one error line, not a pass over the training split. The pass
runs every decoder layer for every position (the checkpoint's own decoder table
is set aside) in eval mode: each position's heads are read at every layer
(docs/design.md section 2).
"""

import logging
from typing import Iterator, Optional

import numpy as np
import torch
from fairseq import checkpoint_utils
from fairseq.data import LanguagePairDataset

from ..checkpoints import load_checkpoint
from ..criterions.multi_exit import layer_logits
from ..errors import HashEEError
from ..exits.rules import every_layer_in_eval
from ..models.truncation import checkpoint_depth
from .difficulty import DifficultyStats, first_adequate_layers

logger = logging.getLogger(__name__)

# Criteria whose checkpoints have trained exit heads at every decoder layer: multi-exit training,
# and the rules trained on such a backbone, frozen or not.
MULTI_EXIT_CRITERIA = (
    "multi_exit_label_smoothed_cross_entropy",
    "calm_exit_classifier",
    "dat_exit_classifier",
    "consistentee_policy",
    "consistentee_joint",
)
_BATCH_TOKENS = 8192  # source + target tokens of one teacher-forced batch (padded)


def _criterion(state: dict) -> Optional[str]:
    cfg = state.get("cfg") or {}
    criterion = cfg.get("criterion") if hasattr(cfg, "get") else None
    if criterion is not None and hasattr(criterion, "get"):
        return criterion.get("_name")
    args = state.get("args")
    return getattr(args, "criterion", None)


def check_checkpoint(path: Optional[str], num_layers: int, vocab_size: int, option: str = "--difficulty-from") -> dict:
    """The checkpoint's state, once it is known to fit a difficulty table of ``num_layers`` decoder
    layers over a target dictionary of ``vocab_size`` symbols; else one error naming ``option``."""
    if not path:
        raise HashEEError(
            f"a difficulty table needs a trained multi-exit checkpoint ({option} CHECKPOINT, e.g. the multi-exit "
            "stage of hashee-compare, trained with --criterion multi_exit_label_smoothed_cross_entropy)"
        )
    state = load_checkpoint(path)
    criterion = _criterion(state)
    if criterion not in MULTI_EXIT_CRITERIA:
        raise HashEEError(
            f"{option}: {path} was trained with --criterion {criterion}, whose checkpoints have no trained exit "
            f"heads; expected one of {', '.join(MULTI_EXIT_CRITERIA)}"
        )
    layers = checkpoint_depth(state["model"], "decoder.")
    if layers != num_layers:
        raise HashEEError(f"{option}: {path} has {layers} decoder layers, the table is for {num_layers}")
    embeddings = state["model"].get("decoder.embed_tokens.weight")
    if embeddings is None or embeddings.size(0) != vocab_size:
        rows = "no" if embeddings is None else embeddings.size(0)
        raise HashEEError(
            f"{option}: {path} has {rows} decoder embeddings, the target dictionary {vocab_size} symbols "
            "(a checkpoint of another dictionary)"
        )
    return state


def load_model(path: str, task=None, overrides: Optional[dict] = None, device: str = "cpu"):
    """The checkpoint's model on ``device`` in eval mode, every decoder layer for every position:
    built by ``task`` (the one training, same dictionaries) or by the checkpoint's own task with
    ``overrides`` (e.g. the data folder)."""
    models, _ = checkpoint_utils.load_model_ensemble([path], arg_overrides=overrides, task=task)
    model = models[0].to(device)
    decoder = model.decoder
    decoder.set_exit_table(torch.full_like(decoder.exit_table, decoder.num_layers), "difficulty measurement")
    return model.eval()


def _batches(src, tgt, src_dict, tgt_dict, max_source: int, max_target: int) -> Iterator[dict]:
    """Teacher-forced batches of every pair: sources longer than the model takes are cut (keeping
    their end of sentence, as --truncate-source does), too long targets skipped."""
    eos = src_dict.eos()
    sources, targets, skipped = [], [], 0
    for i in range(len(src)):
        target = tgt[i].long()
        if len(target) > max_target:
            skipped += 1
            continue
        source = src[i].long()
        if len(source) > max_source:
            source = torch.cat([source[: max_source - 1], source.new_tensor([eos])])
        sources.append(source)
        targets.append(target)
    if skipped:
        logger.info(f"difficulty table: skipped {skipped} pairs with targets over {max_target} tokens")
    dataset = LanguagePairDataset(
        sources,
        np.array([len(s) for s in sources]),
        src_dict,
        targets,
        np.array([len(t) for t in targets]),
        tgt_dict,
        left_pad_source=True,
        left_pad_target=False,
    )
    order = np.argsort([len(s) + len(t) for s, t in zip(sources, targets)], kind="stable")
    batch, widest = [], 0
    for index in order:
        widest = max(widest, len(sources[index]) + len(targets[index]))
        if batch and widest * (len(batch) + 1) > _BATCH_TOKENS:
            yield dataset.collater([dataset[j] for j in batch])
            batch, widest = [], len(sources[index]) + len(targets[index])
        batch.append(index)
    if batch:
        yield dataset.collater([dataset[j] for j in batch])


@torch.no_grad()
def measure(model, src, tgt, src_dict, tgt_dict, statistic: str, margin: float, device: str = "cpu") -> DifficultyStats:
    """Per input type of the decoder, the sum of its positions' first adequate layers, over every pair."""
    stats = DifficultyStats.empty(len(tgt_dict))
    max_source, max_target = model.max_positions()
    layers = model.decoder.num_layers
    with every_layer_in_eval(model):
        for sample in _batches(src, tgt, src_dict, tgt_dict, max_source, max_target):
            net_input = {k: v.to(device) for k, v in sample["net_input"].items()}
            target = sample["target"].to(device)
            net_output = model(**net_input)
            live = target.ne(tgt_dict.pad())
            logits = [layer_logits(model, net_output, layer)[live] for layer in range(1, layers + 1)]
            stats.add(
                net_input["prev_output_tokens"][live], first_adequate_layers(logits, target[live], statistic, margin)
            )
    return stats
