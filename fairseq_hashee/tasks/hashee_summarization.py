"""Summarization with HashEE: fairseq's translation task plus exit-table building.

When a model is built for training, the task hashes every dictionary symbol to
an exit layer, one table per stack, from token statistics of the training
split (source side for the encoder, target side for the decoder) and installs
the tables in the model; they are saved with every checkpoint. When a model is
rebuilt from a checkpoint (fairseq-generate, fairseq-interactive, resuming),
the checkpoint's tables are used unchanged.

The task also reports the FLOPs speed-up, after validation through fairseq's
metrics and at the end of fairseq-generate / fairseq-interactive.
"""

import atexit
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from fairseq import utils
from fairseq.dataclass import ChoiceEnum
from fairseq.logging import metrics
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from .. import hash_functions
from ..errors import HashEEError
from ..modules import flops
from ..token_stats import load_side, token_stats

logger = logging.getLogger(__name__)

_METER_KEYS = (
    "encoder_flops_spent",
    "encoder_flops_full",
    "encoder_exit_sum",
    "encoder_positions",
    "decoder_flops_spent",
    "decoder_flops_full",
    "decoder_exit_sum",
    "decoder_positions",
)
_GENERATION_AGGREGATOR = "hashee_generation"


@dataclass
class HashEESummarizationConfig(TranslationConfig):
    encoder_hash_type: ChoiceEnum(hash_functions.HASH_TYPES) = field(
        default="frequency",
        metadata={"help": "how source tokens are hashed to exit layers"},
    )
    decoder_hash_type: ChoiceEnum(hash_functions.HASH_TYPES) = field(
        default="frequency",
        metadata={"help": "how target tokens are hashed to exit layers (with --decoder-exits)"},
    )
    decoder_exits: bool = field(
        default=False,
        metadata={
            "help": "let decoder tokens exit early too; off by default, every decoder "
            "position runs all layers, as in the paper's summarization results"
        },
    )
    encoder_exit_layers: Optional[str] = field(
        default=None,
        metadata={"help": "comma-separated encoder exit layers (buckets); overrides min/max/step"},
    )
    encoder_exit_min: int = field(default=1, metadata={"help": "lowest encoder exit layer"})
    encoder_exit_max: Optional[int] = field(
        default=None, metadata={"help": "highest encoder exit layer (default: the last layer)"}
    )
    encoder_exit_step: int = field(default=1, metadata={"help": "step between encoder exit layers"})
    decoder_exit_layers: Optional[str] = field(
        default=None,
        metadata={"help": "comma-separated decoder exit layers (buckets); overrides min/max/step"},
    )
    decoder_exit_min: int = field(default=1, metadata={"help": "lowest decoder exit layer"})
    decoder_exit_max: Optional[int] = field(
        default=None, metadata={"help": "highest decoder exit layer (default: the last layer)"}
    )
    decoder_exit_step: int = field(default=1, metadata={"help": "step between decoder exit layers"})
    hash_seed: int = field(default=1, metadata={"help": "seed of the random hash"})
    hash_stats_subset: Optional[str] = field(
        default=None,
        metadata={"help": "split whose token statistics build the tables (default: --train-subset)"},
    )


@register_task("hashee_summarization", dataclass=HashEESummarizationConfig)
class HashEESummarizationTask(TranslationTask):
    cfg: HashEESummarizationConfig

    def __init__(self, cfg: HashEESummarizationConfig, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        self._generation_report_registered = False

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        for stack in (getattr(model, "encoder", None), getattr(model, "decoder", None)):
            if not hasattr(stack, "exit_table"):
                raise HashEEError(
                    f"--task hashee_summarization needs a HashEE model "
                    f"(--arch hashee_bart_base, ...), got --arch {getattr(cfg, 'arch', cfg)}"
                )
        if not from_checkpoint:
            self.install_exit_tables(model)
        return model

    def install_exit_tables(self, model) -> None:
        """Build both tables from the statistics split and put them in ``model``."""
        cfg = self.cfg
        enc_buckets = self._buckets("encoder", model.encoder.num_layers)
        dec_buckets = self._buckets("decoder", model.decoder.num_layers) if cfg.decoder_exits else None
        split = cfg.hash_stats_subset or cfg.train_subset
        data_path = utils.split_paths(cfg.data)[0]

        def side(lang, dictionary):
            return load_side(data_path, split, cfg.source_lang, cfg.target_lang, lang, dictionary, cfg.dataset_impl)

        def table_for(stack, lang, dictionary, other_lang, other_dictionary, hash_type, buckets):
            if buckets is None:
                return torch.full((len(dictionary),), stack.num_layers, dtype=torch.long)
            # The mi hash labels an occurrence by whether its token is also on the
            # other side of the pair (a source token in the reference summary).
            paired = side(other_lang, other_dictionary) if hash_type == "mi" else None
            stats = token_stats(
                side(lang, dictionary), len(dictionary), paired, name=f"{data_path}/{split} ({lang})"
            )
            special = hash_functions.special_symbol_mask(dictionary.symbols, dictionary.nspecial)
            table = hash_functions.build_table(
                hash_type, stats, special, buckets, stack.num_layers, cfg.hash_seed
            )
            self._log_table(stack.stack_name, hash_type, table, stats.counts)
            return torch.from_numpy(table)

        src, tgt = cfg.source_lang, cfg.target_lang
        model.encoder.set_exit_table(
            table_for(model.encoder, src, self.src_dict, tgt, self.tgt_dict, cfg.encoder_hash_type, enc_buckets),
            "--encoder-hash-type",
        )
        model.decoder.set_exit_table(
            table_for(model.decoder, tgt, self.tgt_dict, src, self.src_dict, cfg.decoder_hash_type, dec_buckets),
            "--decoder-hash-type",
        )

    def _buckets(self, stack: str, num_layers: int):
        cfg = self.cfg
        listed = hash_functions.parse_layer_list(
            getattr(cfg, f"{stack}_exit_layers"), f"--{stack}-exit-layers"
        )
        option = f"--{stack}-exit-layers" if listed else f"--{stack}-exit-min/max/step"
        return hash_functions.exit_buckets(
            num_layers,
            layers=listed,
            min_layer=getattr(cfg, f"{stack}_exit_min"),
            max_layer=getattr(cfg, f"{stack}_exit_max"),
            step=getattr(cfg, f"{stack}_exit_step"),
            option=option,
        )

    @staticmethod
    def _log_table(stack: str, hash_type: str, table: np.ndarray, counts: np.ndarray):
        types = Counter(table.tolist())
        mass = np.bincount(table, weights=counts, minlength=table.max() + 1)
        total = max(counts.sum(), 1)
        per_layer = ", ".join(
            f"{layer}: {types[layer]} types / {100.0 * mass[layer] / total:.1f}% tokens"
            for layer in sorted(types)
        )
        logger.info(f"{stack} exit table ({hash_type}): {per_layer}")

    def get_batch_iterator(self, dataset, *args, **kwargs):
        # fairseq 0.12's batch_by_size drops the last batch when its size is not
        # a multiple of --required-batch-size-multiple (default 8; fairseq issue
        # #5036): fine for training, but validation and generation would silently
        # lose up to 7 examples. Only the training split keeps the multiple.
        if dataset is not self.datasets.get(self.cfg.train_subset):
            kwargs["required_batch_size_multiple"] = 1
        return super().get_batch_iterator(dataset, *args, **kwargs)

    # -- speed-up reporting -------------------------------------------------

    def valid_step(self, sample, model, criterion):
        with flops.measuring(model) as meter:
            loss, sample_size, logging_output = super().valid_step(sample, model, criterion)
        for key in _METER_KEYS:
            logging_output[f"hashee_{key}"] = meter.sums.get(key, 0.0)
        return loss, sample_size, logging_output

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        if not any("hashee_encoder_flops_full" in log for log in logging_outputs):
            return
        for key in _METER_KEYS:
            metrics.log_scalar(f"_hashee_{key}", sum(log.get(f"hashee_{key}", 0.0) for log in logging_outputs))
        _log_derived_speedups()

    def inference_step(self, generator, models, sample, prefix_tokens=None, constraints=None):
        with flops.measuring(models[0]) as meter:
            hypos = super().inference_step(generator, models, sample, prefix_tokens, constraints)
        with metrics.aggregate(_GENERATION_AGGREGATOR):
            for key in _METER_KEYS:
                metrics.log_scalar(f"_hashee_{key}", meter.sums.get(key, 0.0))
            _log_derived_speedups()
        if not self._generation_report_registered:
            self._generation_report_registered = True
            atexit.register(_report_generation_speedup)
        return hypos


def _log_derived_speedups():
    def derived(name):
        def compute(meters):
            sums = {key: meters[f"_hashee_{key}"].sum for key in _METER_KEYS}
            return flops.speedup_report(sums)[name]

        return compute

    for name in ("enc_speedup", "dec_speedup", "total_speedup", "enc_mean_exit", "dec_mean_exit"):
        metrics.log_derived(name, derived(name))


def _report_generation_speedup():
    """Printed once when fairseq-generate / fairseq-interactive exits."""
    values = metrics.get_smoothed_values(_GENERATION_AGGREGATOR)
    if "total_speedup" in values:
        logger.info("HashEE generation " + flops.format_report(values))
