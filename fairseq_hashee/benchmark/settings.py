"""What the benchmark runs: its configurations, the models sharing one set of weights, tables and inputs.

A *configuration* is a model and its exits (stock BART, HashEE with no exits,
with encoder exits, ...); a *setting* is what they all run on: the encoder
forward or beam-search generation (forced along sampled targets or free), a
source length, a batch size and the exit tables. Every configuration of a
setting sees the same inputs and the same weights.
"""

import argparse
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
from fairseq.data import Dictionary
from fairseq.models import ARCH_CONFIG_REGISTRY
from fairseq.models.bart import BARTModel
from fairseq.models.bart.model import bart_base_architecture
from fairseq.sequence_generator import SequenceGenerator

from .. import models as hashee_models
from ..checkpoints import load_model_state
from ..errors import HashEEError
from ..exits import build_exit_rule
from ..exits.rules import rule_scores, scored_layers
from ..tables.recipe import SplitSides, TableOptions, TableRecipe, recipe_from_split
from ..tables.token_stats import TokenStats

STOCK, NO_EXITS, ENC_EXITS, ALL_EXITS = (
    "fairseq BART",
    "HashEE, no exits",
    "HashEE, encoder exits",
    "HashEE, enc+dec exits",
)
# The methods HashEE is compared with (docs/exit-methods.md), on the same weights: a
# static half-depth model (the first layers of each stack), and dynamic decoder rules
# beside HashEE encoder exits, their thresholds at the median of their scores on the
# setting's own inputs (random weights give no meaningful confidence to fix one at); the
# agreement rule keeps its default threshold 0 and patience 1 (agreement of successive heads alone).
STATIC_HALF, CALM_SOFTMAX, CALM_SATURATION, DAT_HALTING, CONSISTENTEE, AGREEMENT = (
    "static half depth",
    "CALM softmax, enc exits",
    "CALM saturation, enc ex.",
    "DAT halting, enc exits",
    "ConsistentEE, enc exits",
    "agreement, enc exits",  # LECO's comparison of successive exits (the COBEE stand-in), shared heads
)
RULE_CONFIGS = {
    CALM_SOFTMAX: {"decoder_exit_rule": "confidence", "exit_confidence": "softmax"},
    CALM_SATURATION: {"decoder_exit_rule": "confidence", "exit_confidence": "saturation"},
    DAT_HALTING: {"decoder_exit_rule": "dat-halting"},
    CONSISTENTEE: {"decoder_exit_rule": "consistentee"},
    AGREEMENT: {"decoder_exit_rule": "agreement"},
}
CONFIGS = (STOCK, NO_EXITS, ENC_EXITS, ALL_EXITS, STATIC_HALF, *RULE_CONFIGS)
OTHER_METHODS = (STATIC_HALF, *RULE_CONFIGS)
# Free decoding differs from forced only in the decoder tokens the model chooses: only decoder
# hash exits depend on them (a rule decides from states either way).
FREE_DECODING_CONFIGS = (STOCK, NO_EXITS, ALL_EXITS)
# How --configs names them.
CONFIG_KEYS = {
    "stock": STOCK,
    "no-exits": NO_EXITS,
    "enc-exits": ENC_EXITS,
    "all-exits": ALL_EXITS,
    "half": STATIC_HALF,
    "calm-softmax": CALM_SOFTMAX,
    "calm-saturation": CALM_SATURATION,
    "dat-halting": DAT_HALTING,
    "consistentee": CONSISTENTEE,
    "agreement": AGREEMENT,
}
DECODINGS = ("forced", "free")


class _Dictionaries:
    def __init__(self, dictionary):
        self.source_dictionary = self.target_dictionary = dictionary


def synthetic_dictionary(size: int) -> Dictionary:
    dictionary = Dictionary()
    for i in range(size - len(dictionary)):
        dictionary.add_symbol(f"tok{i}")
    return dictionary


def model_overrides(text: str) -> Dict[str, int]:
    """``--model-args "encoder_layers=2,encoder_embed_dim=32"`` as a dict."""
    overrides = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = item.partition("=")
        try:
            overrides[key.strip()] = int(value)
        except ValueError:
            raise HashEEError(f"--model-args: expected name=integer pairs, got {item!r}") from None
        if not sep:
            raise HashEEError(f"--model-args: expected name=integer pairs, got {item!r}")
    return overrides


class Models(NamedTuple):
    """Every model a benchmark runs, sharing one set of weights."""

    hashee: torch.nn.Module
    stock: Optional[torch.nn.Module]  # fairseq's BART (BART architectures only)
    half: torch.nn.Module  # the first half of each of HashEE's stacks (static truncation)
    rules: Dict[str, torch.nn.Module]  # a decoder exit rule per rule configuration


def build_models(args, dictionary, max_source: int) -> Models:
    """HashEE, stock fairseq BART and the static half-depth model with the same weights,
    and the dynamic rules (their own parameters random)."""
    model_args = argparse.Namespace(
        arch=args.arch,
        task="hashee_summarization",
        dropout=0.0,
        attention_dropout=0.0,
        max_source_positions=max_source,
        max_target_positions=max(args.tgt_len + 2, 8),
        **model_overrides(args.model_args),
    )
    ARCH_CONFIG_REGISTRY[args.arch](model_args)
    torch.manual_seed(args.seed)
    hashee_class = (
        hashee_models.HashEEBARTModel if args.arch.startswith("hashee_bart") else hashee_models.HashEECPTModel
    )
    hashee = hashee_class.build_model(model_args, _Dictionaries(dictionary))
    if args.checkpoint:
        hashee.load_state_dict(load_model_state(args.checkpoint), strict=True)
    stock = None
    if args.arch.startswith("hashee_bart"):
        stock_args = argparse.Namespace(**{**vars(model_args), "arch": "bart_base"})
        bart_base_architecture(stock_args)
        stock = BARTModel.build_model(stock_args, _Dictionaries(dictionary))
        share_parameters(hashee, stock)
    half_args = argparse.Namespace(**vars(model_args))
    half_args.encoder_layers = (hashee.encoder.num_layers + 1) // 2
    half_args.decoder_layers = (hashee.decoder.num_layers + 1) // 2
    half = hashee_class.build_model(half_args, _Dictionaries(dictionary))
    share_parameters(hashee, half)  # layers 0..k-1 are the full model's first k
    for stack, full in ((half.encoder, hashee.encoder), (half.decoder, hashee.decoder)):
        stack.load_state_dict({"full_depth": full.full_depth}, strict=False)  # report against the full depth
    rules = {
        config: build_exit_rule(
            argparse.Namespace(**options), hashee.decoder.shape.embed_dim, hashee.decoder.num_layers
        )
        for config, options in RULE_CONFIGS.items()
    }
    return Models(hashee, stock, half, rules)


def share_parameters(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Make ``target``'s parameters the very tensors of ``source``'s, by name.

    Same weights then means same memory: neither model can be favoured by
    where its weights happen to lie (page placement moves wall-clock by a
    few percent between copies on the CPU), and the weights are held once.
    """
    params = dict(source.named_parameters(remove_duplicate=False))
    for module_name, module in target.named_modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            full = f"{module_name}.{name}" if module_name else name
            if full not in params:
                raise HashEEError(f"benchmark: stock BART parameter {full} has no HashEE counterpart")
            module._parameters[name] = params[full]


def zipf_probabilities(dictionary: Dictionary, exponent: float = 1.0) -> np.ndarray:
    """Probability of each id in synthetic text: Zipf over the non-special ids, in id order."""
    probs = np.zeros(len(dictionary))
    ranks = np.arange(len(dictionary) - dictionary.nspecial)
    probs[dictionary.nspecial :] = 1.0 / (ranks + 2.7) ** exponent
    return probs / probs.sum()


def _stack_options(args, stack: str) -> TableOptions:
    layers = args.encoder_exit_layers if stack == "encoder" else args.decoder_exit_layers
    return TableOptions(args.hash_type, exit_layers=layers, seed=args.seed, option_prefix=f"--{stack}-")


def _embeddings(stack) -> np.ndarray:
    return stack.embed_tokens.weight.detach().float().cpu().numpy()


def exit_tables(args, hashee, dictionary) -> Dict[str, np.ndarray]:
    """Each stack's table, hashed over the training split of ``--data`` or, without it,
    over the statistics of synthetic Zipf text on ``dictionary``."""
    if args.data:
        sides = SplitSides(args.data, "train", args.source_lang, args.target_lang, dictionary, dictionary)
    else:
        stats = TokenStats(np.round(zipf_probabilities(dictionary) * 1e9).astype(np.int64))
    tables = {}
    for stack in ("encoder", "decoder"):
        module, options = getattr(hashee, stack), _stack_options(args, stack)
        if args.data:
            recipe = recipe_from_split(sides, stack, options, module.num_layers)
        else:
            recipe = TableRecipe(
                stack, options, module.num_layers, dictionary.symbols, dictionary.nspecial, stats, "synthetic Zipf text"
            )
        tables[stack] = recipe.build(_embeddings(module), "benchmark model").table
    return tables


class Inputs:
    """Sources and sampled targets of one setting, drawn once and reused by every configuration."""

    def __init__(self, args, dictionary, probs, src_len: int, batch: int, device):
        gen = torch.Generator().manual_seed(args.seed + src_len * 131 + batch)
        weights = torch.from_numpy(probs)
        src = torch.multinomial(weights, batch * src_len, replacement=True, generator=gen).view(batch, src_len)
        src[:, -1] = dictionary.eos()
        tgt = torch.multinomial(weights, batch * args.tgt_len, replacement=True, generator=gen).view(
            batch, args.tgt_len
        )
        self.src_tokens = src.to(device)
        self.src_lengths = torch.full((batch,), src_len, device=device)
        self.targets = tgt.to(device)
        # The teacher-forced decoder input of the sampled targets: what rule thresholds are set on.
        self.prev = torch.cat([torch.full((batch, 1), dictionary.eos()), tgt[:, :-1]], dim=1).to(device)
        self.sample = {"net_input": {"src_tokens": self.src_tokens, "src_lengths": self.src_lengths}}


class Setting(NamedTuple):
    """One input setting: what is run, on which inputs, with which tables."""

    kind: str  # "encoder" or "generate"
    inputs: Inputs
    tables: Dict[str, np.ndarray]
    decoding: Optional[str] = None  # generation: "forced" along the sampled targets, or "free"
    other_methods: bool = True  # whether the other methods' rows (static half depth, rules) run here

    def describe(self) -> str:
        src = self.inputs.src_tokens
        decoding = f", {self.decoding} decoding" if self.decoding else ""
        return f"{self.kind}, source length {src.size(1)}, batch {src.size(0)}{decoding}"


def chosen_configs(text: str) -> List[str]:
    """The configurations ``--configs`` names (all when empty); HashEE with no exits always runs:
    every speed-up is measured against it or against stock BART."""
    keys = [key.strip() for key in (text or "").split(",") if key.strip()]
    unknown = [key for key in keys if key not in CONFIG_KEYS]
    if unknown:
        raise HashEEError(f"--configs: unknown {', '.join(unknown)}; expected some of {', '.join(CONFIG_KEYS)}")
    wanted = {CONFIG_KEYS[key] for key in keys} | {NO_EXITS} if keys else set(CONFIGS)
    return [c for c in CONFIGS if c in wanted]


def configs(models: Models, setting: Setting, wanted: List[str]) -> List[str]:
    """Of the ``wanted`` configurations: stock BART where the architecture has one;
    decoder rules in generation only; the other methods where the setting has them;
    in free decoding, those whose exits depend on the tokens chosen."""
    return [
        c
        for c in wanted
        if (c != STOCK or models.stock is not None)
        and (setting.kind == "generate" or c not in RULE_CONFIGS)
        and (setting.other_methods or c not in OTHER_METHODS)
        and (setting.decoding != "free" or c in FREE_DECODING_CONFIGS)
    ]


def check_rule_configs(models: Models, wanted: List[str]) -> None:
    """Refuse, before anything is measured, a wanted rule that decides at no layer below the top
    of this decoder: its row would be the model without a rule, and rule_scores has nothing to
    set its threshold from."""
    depth = models.hashee.decoder.num_layers
    for key, config in CONFIG_KEYS.items():
        if config in wanted and config in models.rules and not scored_layers(models.rules[config], depth):
            raise HashEEError(
                f"--configs: {key}: the {models.rules[config].name} rule decides at no layer below the top of "
                f"this {depth}-layer decoder; leave {key} out of --configs"
            )


def set_tables(hashee, encoder: Optional[np.ndarray], decoder: Optional[np.ndarray]) -> None:
    for stack, table in ((hashee.encoder, encoder), (hashee.decoder, decoder)):
        full = torch.full_like(stack.exit_table, stack.num_layers)
        stack.set_exit_table(full if table is None else torch.from_numpy(table), "benchmark")


def runner(setting: Setting, models: Models, args, dictionary) -> Callable[[str], Tuple[torch.nn.Module, Callable]]:
    """For a configuration, the model it runs and the call that runs it (tables and rule installed)."""
    inputs, tables = setting.inputs, setting.tables
    hashee = models.hashee
    thresholds: Dict[str, float] = {}
    forced = setting.decoding == "forced"

    def prepare(config):
        model = {STOCK: models.stock, STATIC_HALF: models.half}.get(config, hashee)
        if model is hashee:
            set_tables(
                hashee,
                None if config == NO_EXITS else tables["encoder"],
                tables["decoder"] if config == ALL_EXITS else None,
            )
            hashee.decoder.exit_rule = models.rules.get(config)
            if config in RULE_CONFIGS and config != AGREEMENT:  # agreement: its default, 0 (agreement alone)
                if config not in thresholds:
                    thresholds[config] = float(
                        rule_scores(hashee, inputs.src_tokens, inputs.src_lengths, inputs.prev).median()
                    )
                models.rules[config].set_threshold(thresholds[config])
        if setting.kind == "encoder":
            return model, lambda: model.encoder(inputs.src_tokens, inputs.src_lengths)
        generator = SequenceGenerator(
            [model],
            dictionary,
            beam_size=args.beam,
            max_len_a=0,
            max_len_b=args.tgt_len,
            min_len=args.tgt_len if forced else 1,
        )
        prefix = inputs.targets if forced else None
        return model, lambda: generator.generate([model], inputs.sample, prefix_tokens=prefix)

    return prepare
