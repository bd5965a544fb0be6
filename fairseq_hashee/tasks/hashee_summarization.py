"""Summarization with HashEE: fairseq's translation task plus exit-table building.

When a model is built for training, the task gives each stack a table that
maps every dictionary symbol to an exit layer: read from a file
(--encoder/decoder-hash-table) or hashed from token statistics of the training
split (source side for the encoder, target side for the decoder). The tables
are saved with every checkpoint. When a model is
rebuilt from a checkpoint (fairseq-generate, fairseq-interactive, resuming),
the checkpoint's tables are used unchanged.

The task also reports the FLOPs speed-up, after validation through fairseq's
metrics and at the end of fairseq-generate / fairseq-interactive.
"""

import atexit
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq import utils
from fairseq.dataclass import ChoiceEnum
from fairseq.logging import metrics
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from ..criterions.frozen_backbone import freeze_backbone
from ..errors import HashEEError
from ..modules import flops
from ..precision import allow_bf16_without_tpu
from ..tables import difficulty, hash_functions
from ..tables.dictionary_file import load_dictionary
from ..tables.recipe import SplitSides, TableOptions, recipe_from_split
from ..tables.table_file import read_table

logger = logging.getLogger(__name__)

_GENERATION_AGGREGATOR = "hashee_generation"


@dataclass
class HashEESummarizationConfig(TranslationConfig):
    encoder_hash_type: ChoiceEnum(hash_functions.HASH_TYPES) = field(
        default="frequency",
        metadata={"help": "how source tokens are hashed to exit layers"},
    )
    decoder_hash_type: ChoiceEnum(hash_functions.TABLE_TYPES) = field(
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
    encoder_hash_table: Optional[str] = field(
        default=None,
        metadata={"help": "load the encoder table from this file (see hashee-table) instead of building it"},
    )
    decoder_hash_table: Optional[str] = field(
        default=None,
        metadata={"help": "load the decoder table from this file instead of building it (implies decoder exits)"},
    )
    difficulty_from: Optional[str] = field(
        default=None,
        metadata={
            "help": "--decoder-hash-type difficulty: the trained multi-exit checkpoint whose exit heads measure, "
            "teacher-forced on the statistics split, how early each input token's positions are predicted"
        },
    )
    difficulty_mean_exit: Optional[float] = field(
        default=None,
        metadata={"help": "--decoder-hash-type difficulty: the mean decoder exit layer over the split's positions"},
    )
    difficulty_statistic: ChoiceEnum(difficulty.STATISTICS) = field(
        default=difficulty.DEFAULT_STATISTIC,
        metadata={
            "help": "a position's difficulty: the first layer whose head's argmax is the reference ('correct') or "
            "whose reference NLL is within --difficulty-margin of the top layer's ('margin')"
        },
    )
    difficulty_margin: float = field(
        default=difficulty.DEFAULT_MARGIN, metadata={"help": "nats of --difficulty-statistic margin"}
    )
    hash_stats_subset: Optional[str] = field(
        default=None,
        metadata={"help": "split whose token statistics build the tables (default: --train-subset)"},
    )
    exit_threshold: Optional[float] = field(
        default=None,
        metadata={
            "help": "threshold of the model's dynamic exit rule (--decoder-exit-rule), for validation and "
            "generation; settable without retraining (default: the rule's, 0.9)"
        },
    )
    exit_min_layer: int = field(
        default=1, metadata={"help": "lowest decoder layer at which the dynamic exit rule may exit a position"}
    )
    exit_patience: Optional[int] = field(
        default=None,
        metadata={
            "help": "the agreement rule's patience (--decoder-exit-rule agreement): a position exits once this "
            "many heads below the layer's agree with its prediction; settable without retraining (default 1)"
        },
    )
    exit_threshold_decay: Optional[float] = field(
        default=None,
        metadata={
            "help": "CALM's decaying threshold for --decoder-exit-rule confidence: its temperature tau (CALM: 4) in "
            "lambda(t) = clip(0.9 lambda + 0.1 exp(-tau t / N)), t the decoding position; default: a constant "
            "threshold"
        },
    )
    use_adapt_threshold: bool = field(
        default=False,
        metadata={
            "help": "the free rule's adaptive threshold (FREE's Beta mixture estimator): refitted at the start of "
            "each generation from the shallow confidences and shallow/deep agreement of the positions computed "
            "deeply so far; --exit-threshold is used until the first fit"
        },
    )
    exit_threshold_decay_length: Optional[int] = field(
        default=None,
        metadata={
            "help": "N of --exit-threshold-decay, the maximum target length (default: the generation's --max-len-b "
            "under --max-len-a 0; in validation, the decoder's maximum target positions)"
        },
    )


@register_task("hashee_summarization", dataclass=HashEESummarizationConfig)
class HashEESummarizationTask(TranslationTask):
    cfg: HashEESummarizationConfig

    def __init__(self, cfg: HashEESummarizationConfig, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        self._generation_report_registered = False

    @classmethod
    def setup_task(cls, cfg: HashEESummarizationConfig, **kwargs):
        allow_bf16_without_tpu(cfg)
        if cfg.hash_seed < 0:
            raise HashEEError(f"--hash-seed: must be a non-negative integer, got {cfg.hash_seed}")
        return super().setup_task(cfg, **kwargs)

    @classmethod
    def load_dictionary(cls, filename):
        return load_dictionary(filename)

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        data = utils.split_paths(self.cfg.data)[(epoch - 1) % len(utils.split_paths(self.cfg.data))]
        src, tgt = self.cfg.source_lang, self.cfg.target_lang
        empty = HashEEError(f"{data}: split {split!r} ({src}-{tgt}) has no examples")
        # fairseq cannot even open an empty binarized split (it mmaps the file).
        for pair in (f"{src}-{tgt}", f"{tgt}-{src}"):
            binary = os.path.join(data, f"{split}.{pair}.{src}.bin")
            if os.path.exists(binary) and os.path.getsize(binary) == 0:
                raise empty
        super().load_dataset(split, epoch, combine, **kwargs)
        if len(self.datasets[split]) == 0:
            raise empty

    def filter_indices_by_size(self, indices, dataset, max_positions=None, ignore_invalid_inputs=False):
        indices, ignored = dataset.filter_indices_by_size(indices, max_positions)
        if len(ignored) > 0 and not ignore_invalid_inputs:
            raise HashEEError(
                f"{len(ignored)} example(s) longer than the model's max positions {max_positions} "
                f"(first: #{ignored[0]}, size {dataset.size(ignored[0])}); pass --truncate-source to "
                "cut long sources, or --skip-invalid-size-inputs-valid-test to skip them"
            )
        if len(ignored) > 0:
            logger.warning(f"skipping {len(ignored)} example(s) longer than max positions {max_positions}")
        return indices

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
            model.exit_parameters_may_start_fresh = True
            freeze_backbone(model, self._criterion_name())
        self.configure_exit_rule(model)
        return model

    def _criterion_name(self) -> Optional[str]:
        """The --criterion of the run this task belongs to (fairseq builds the model before the criterion)."""
        root = self.cfg._get_root() if hasattr(self.cfg, "_get_root") else None
        criterion = root.get("criterion") if root is not None and hasattr(root, "get") else None
        return getattr(criterion, "_name", None)

    def configure_exit_rule(self, model) -> None:
        """The generation-time settings of the decoder's exit rule (threshold, lowest layer, decay)."""
        rule, cfg = model.decoder.exit_rule, self.cfg
        if cfg.exit_threshold_decay_length is not None and cfg.exit_threshold_decay is None:
            raise HashEEError("--exit-threshold-decay-length: it is N of --exit-threshold-decay, which is not set")
        if rule is None:
            rule_options = {
                "--exit-threshold": cfg.exit_threshold,
                "--use-adapt-threshold": cfg.use_adapt_threshold or None,
                "--exit-patience": cfg.exit_patience,
                "--exit-threshold-decay": cfg.exit_threshold_decay,
            }
            for option, value in rule_options.items():
                if value is not None:
                    raise HashEEError(
                        f"{option}: the model has no dynamic exit rule (it was built without --decoder-exit-rule)"
                    )
            return
        if cfg.use_adapt_threshold:
            if not hasattr(rule, "use_adaptive_threshold"):
                raise HashEEError(f"--use-adapt-threshold: the {rule.name} rule has no adaptive threshold (FREE's has)")
            rule.use_adaptive_threshold(True)
        if cfg.exit_patience is not None:
            if not hasattr(rule, "set_patience"):
                raise HashEEError(f"--exit-patience: the {rule.name} rule takes no patience (the agreement rule does)")
            rule.set_patience(cfg.exit_patience)
        if not 1 <= cfg.exit_min_layer <= model.decoder.num_layers:
            raise HashEEError(
                f"--exit-min-layer: {cfg.exit_min_layer} is outside the decoder's layers 1..{model.decoder.num_layers}"
            )
        if cfg.exit_threshold is not None:
            rule.set_threshold(cfg.exit_threshold)
        rule.min_layer = cfg.exit_min_layer
        if cfg.exit_threshold_decay is not None:
            if not hasattr(rule, "set_threshold_decay"):
                raise HashEEError(
                    f"--exit-threshold-decay: the {rule.name} rule has no decaying threshold (CALM's confidence rule, "
                    "--decoder-exit-rule confidence, has)"
                )
            length = cfg.exit_threshold_decay_length
            rule.set_threshold_decay(
                cfg.exit_threshold_decay, model.decoder.max_positions() if length is None else length
            )

    def build_generator(self, models, args, *extra, **kwargs):
        """fairseq's generator; CALM's decaying threshold takes its N from the generation's
        maximum length when ``--exit-threshold-decay-length`` does not give it."""
        cfg = self.cfg
        if cfg.exit_threshold_decay is not None and cfg.exit_threshold_decay_length is None:
            if getattr(args, "max_len_a", 0) != 0:
                raise HashEEError(
                    "--exit-threshold-decay: the maximum length N varies with the source under --max-len-a "
                    f"{args.max_len_a}; give it with --exit-threshold-decay-length"
                )
            for model in models:
                model.decoder.exit_rule.set_threshold_decay(cfg.exit_threshold_decay, args.max_len_b)
        return super().build_generator(models, args, *extra, **kwargs)

    def table_options(self, stack: str) -> TableOptions:
        """The task's options for ``stack``'s table (``--encoder-*`` or ``--decoder-*``)."""
        cfg = self.cfg
        if stack == "encoder":
            return TableOptions(
                cfg.encoder_hash_type,
                cfg.encoder_exit_layers,
                cfg.encoder_exit_min,
                cfg.encoder_exit_max,
                cfg.encoder_exit_step,
                cfg.hash_seed,
                "--encoder-",
            )
        return TableOptions(
            cfg.decoder_hash_type,
            cfg.decoder_exit_layers,
            cfg.decoder_exit_min,
            cfg.decoder_exit_max,
            cfg.decoder_exit_step,
            cfg.hash_seed,
            "--decoder-",
            cfg.difficulty_from,
            cfg.difficulty_mean_exit,
            cfg.difficulty_statistic,
            cfg.difficulty_margin,
        )

    def _device(self) -> str:
        """Where a difficulty table's checkpoint reads the split: the training's device."""
        root = self.cfg._get_root() if hasattr(self.cfg, "_get_root") else None
        common = root.get("common") if root is not None and hasattr(root, "get") else None
        on_cpu = bool(getattr(common, "cpu", False))
        return "cuda" if torch.cuda.is_available() and not on_cpu else "cpu"

    def install_exit_tables(self, model) -> None:
        """Put one table per stack in ``model``: loaded from a file, or built from data."""
        cfg = self.cfg
        sides = SplitSides(
            utils.split_paths(cfg.data)[0],
            cfg.hash_stats_subset or cfg.train_subset,
            cfg.source_lang,
            cfg.target_lang,
            self.src_dict,
            self.tgt_dict,
            cfg.dataset_impl,
        )
        table_files = {"encoder": cfg.encoder_hash_table, "decoder": cfg.decoder_hash_table}
        builds_difficulty = cfg.decoder_exits and cfg.decoder_hash_type == "difficulty" and not cfg.decoder_hash_table
        if (cfg.difficulty_from or cfg.difficulty_mean_exit is not None) and not builds_difficulty:
            raise HashEEError(
                "--difficulty-from/--difficulty-mean-exit: only a difficulty table reads them "
                "(--decoder-exits --decoder-hash-type difficulty, without --decoder-hash-table)"
            )
        for stack in (model.encoder, model.decoder):
            name, path = stack.stack_name, table_files[stack.stack_name]
            if path:
                loaded = read_table(path, stack.dictionary.symbols, name, stack.num_layers, stack.dictionary.nspecial)
                logger.info(f"{name} exit table from {path} ({loaded.hash_type} {loaded.options})")
                stack.set_exit_table(torch.from_numpy(loaded.table), path)
            elif name == "encoder" or cfg.decoder_exits:
                options = self.table_options(name)
                device = self._device() if options.hash_type == "difficulty" else "cpu"
                recipe = recipe_from_split(sides, name, options, stack.num_layers, self, device)
                embeddings, described = None, ""
                if recipe.needs_embeddings:
                    # The table follows the model's embeddings: those it starts
                    # with, or those --restore-file brings (HashEEBARTModel rebuilds it).
                    stack.exit_table_recipe = recipe
                    embeddings, described = (
                        stack.embed_tokens.weight.detach().float().cpu().numpy(),
                        "initial embeddings",
                    )
                table = recipe.build(embeddings, described).table
                what = f"{recipe.options.hash_type}, {described}" if described else recipe.options.hash_type
                logger.info(f"{name} exit table ({what}): {recipe.histogram(table)}")
                stack.set_exit_table(torch.from_numpy(table), f"--{name}-hash-type")

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
        for key in flops.METER_KEYS:
            logging_output[f"hashee_{key}"] = meter.sums.get(key, 0.0)
        return loss, sample_size, logging_output

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        if not any(f"hashee_{flops.METER_KEYS[0]}" in log for log in logging_outputs):
            return
        for key in flops.METER_KEYS:
            metrics.log_scalar(f"_hashee_{key}", sum(log.get(f"hashee_{key}", 0.0) for log in logging_outputs))
        _log_derived_speedups()

    def inference_step(self, generator, models, sample, prefix_tokens=None, constraints=None):
        with flops.measuring(models[0]) as meter:
            hypos = super().inference_step(generator, models, sample, prefix_tokens, constraints)
        with metrics.aggregate(_GENERATION_AGGREGATOR):
            for key in flops.METER_KEYS:
                metrics.log_scalar(f"_hashee_{key}", meter.sums.get(key, 0.0))
            _log_derived_speedups()
        if not self._generation_report_registered:
            self._generation_report_registered = True
            atexit.register(_report_generation_speedup)
        return hypos


def _log_derived_speedups():
    def derived(name):
        def compute(meters):
            sums = {key: meters[f"_hashee_{key}"].sum for key in flops.METER_KEYS}
            return flops.speedup_report(sums)[name]

        return compute

    for name in ("enc_speedup", "dec_speedup", "total_speedup", "enc_mean_exit", "dec_mean_exit"):
        metrics.log_derived(name, derived(name))


def _report_generation_speedup():
    """Printed once when fairseq-generate / fairseq-interactive exits."""
    values = metrics.get_smoothed_values(_GENERATION_AGGREGATOR)
    if "total_speedup" in values:
        # beam search's steps: what a generation's wall-clock time follows at small sizes (compare/report.py)
        calls = metrics.get_meters(_GENERATION_AGGREGATOR)["_hashee_decoder_calls"].sum
        logger.info("HashEE generation " + flops.format_report({**values, "dec_calls": calls}))
