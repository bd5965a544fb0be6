"""Convert a Hugging Face CPT or BART checkpoint into a fairseq checkpoint for HashEE.

    hashee-convert HF_DIR -o OUT_DIR

HF_DIR holds config.json, model.safetensors or pytorch_model.bin, and
vocab.txt (CPT: fnlp/cpt-*, Chinese BART: fnlp/bart-*-chinese) or vocab.json
(English BART: facebook/bart-*; pass --gpt2-encoder encoder.json to name the
symbols by GPT-2 id, as fairseq's BART dict.txt and GPT-2 BPE do). OUT_DIR gets model.pt (for fairseq-train
--restore-file, with the --reset-* flags) and dict.txt (for fairseq-preprocess
--srcdict/--tgtdict). The checkpoint carries no exit tables: the
hashee_summarization task builds them when fine-tuning starts.

model.pt carries no model options either: fairseq-train builds the model from
its command line, so the printed command is the only way the config's options
reach it (``--activation-fn``, ``--scale-embedding`` and sizes that differ
from the arch's). The converter checks the model that command builds, and
refuses a config with an option no flag can say.
"""

import argparse
import os
import sys
import tempfile
from typing import List

import torch
from fairseq.data import Dictionary
from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY

from .. import models  # noqa: F401  (registers the HashEE architectures)
from ..conversion.hf_files import load_config, load_vocab, load_weights
from ..conversion.key_mapping import Converted, convert_state
from ..conversion.vocabulary import VocabMapping, gpt2_symbols, map_vocab
from ..errors import HashEEError
from ..io_utils import atomic_write

# (family, model dim, encoder layers, decoder layers) of the released checkpoints.
RELEASED = {
    ("cpt", 768, 10, 2): "hashee_cpt_base",
    ("cpt", 1024, 20, 4): "hashee_cpt_large",
    ("bart", 768, 6, 6): "hashee_bart_base",
    ("bart", 1024, 12, 12): "hashee_bart_large",
}
RESET_FLAGS = "--reset-optimizer --reset-dataloader --reset-meters --reset-lr-scheduler"


class _Dictionaries:
    """What fairseq's build_model asks of a task."""

    def __init__(self, dictionary):
        self.source_dictionary = self.target_dictionary = dictionary


def choose_arch(converted: Converted):
    """The registered arch for these weights, and the options that differ from its defaults."""
    a = converted.args
    arch = RELEASED.get((converted.family, a["encoder_embed_dim"], a["encoder_layers"], a["decoder_layers"]))
    arch = arch or f"hashee_{converted.family}_base"
    return arch, arch_overrides(converted, arch)


def arch_overrides(converted: Converted, arch: str) -> dict:
    defaults = argparse.Namespace()
    ARCH_CONFIG_REGISTRY[arch](defaults)
    return {k: v for k, v in converted.args.items() if getattr(defaults, k, None) != v}


def option_flags(overrides) -> List[str]:
    """Command-line flags of option values; a boolean is a switch (False is the archs' default)."""
    flags = []
    for key, value in overrides.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags += [flag] if value else []
        else:
            flags += [flag, str(value)]
    return flags


def model_options(arch: str, flags: List[str]) -> argparse.Namespace:
    """The model options fairseq-train derives from ``--arch ARCH FLAGS``.

    Parsed as fairseq parses them (the model's own arguments, unset ones left
    out, then the arch's defaults), so a model built from these is the model
    the printed command builds, not one built from the converter's own values.
    """
    parser = argparse.ArgumentParser(argument_default=argparse.SUPPRESS, add_help=False, allow_abbrev=False)
    ARCH_MODEL_REGISTRY[arch].add_args(parser)
    args = parser.parse_args(flags)
    args.arch, args.task = arch, "hashee_summarization"
    ARCH_CONFIG_REGISTRY[arch](args)
    return args


def build_checked_model(converted: Converted, arch: str, dictionary: Dictionary):
    """Build the fairseq model the printed command describes and load the converted
    weights strictly: proof they fit (tests check that it computes what the checkpoint did)."""
    args = model_options(arch, option_flags(arch_overrides(converted, arch)))
    try:
        model = ARCH_MODEL_REGISTRY[arch].build_model(args, _Dictionaries(dictionary))
    except (AssertionError, RuntimeError, ValueError) as err:
        raise HashEEError(f"the checkpoint's shapes make no {arch} model ({err})") from None
    model.load_state_dict(dict(converted.state), strict=True)
    return model


def convert(hf_dir: str, out_dir: str, force: bool = False, gpt2_encoder: str = None) -> dict:
    model_path, dict_path = os.path.join(out_dir, "model.pt"), os.path.join(out_dir, "dict.txt")
    for path in (model_path, dict_path):
        if os.path.exists(path) and not force:
            raise HashEEError(f"{path}: exists; pass --force to overwrite it")
    if not os.path.isdir(hf_dir):
        raise HashEEError(f"{hf_dir}: no such checkpoint directory")
    config = load_config(hf_dir)
    vocab: VocabMapping = map_vocab(load_vocab(hf_dir), hf_dir)
    if gpt2_encoder:
        vocab = gpt2_symbols(vocab, gpt2_encoder)
    converted = convert_state(load_weights(hf_dir), config, vocab, hf_dir)
    arch, overrides = choose_arch(converted)
    options = " ".join(option_flags(overrides))

    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        # The dictionary as fairseq will read it, then the model built on it.
        scratch_dict = os.path.join(scratch, "dict.txt")
        vocab.write_dict(scratch_dict)
        dictionary = Dictionary.load(scratch_dict)
        if len(dictionary) != len(vocab.symbols):
            raise HashEEError(
                f"{hf_dir}: the vocabulary became {len(dictionary)} fairseq symbols, not {len(vocab.symbols)}"
            )
        build_checked_model(converted, arch, dictionary)

    state = {
        "args": None,
        "cfg": None,
        "model": converted.state,
        "optimizer_history": [
            {"criterion_name": "none", "optimizer_name": "none", "lr_scheduler_state": {"best": None}, "num_updates": 0}
        ],
        "extra_state": {
            "train_iterator": {"epoch": 1},
            "hashee_converted_from": os.path.abspath(hf_dir),
            "hashee_arch": arch,
            "hashee_options": options,
        },
        "last_optimizer_state": None,
    }
    with atomic_write(model_path, binary=True) as out:
        torch.save(state, out)
    vocab.write_dict(dict_path)
    return {
        "family": converted.family,
        "arch": arch,
        "options": options,
        "dropped": converted.dropped,
        "vocab": vocab.kind,
        "symbols": len(vocab.symbols),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("hf_dir", help="Hugging Face checkpoint directory")
    parser.add_argument("-o", "--output-dir", required=True, help="where model.pt and dict.txt go")
    parser.add_argument("--force", action="store_true", help="overwrite an existing model.pt / dict.txt")
    parser.add_argument(
        "--gpt2-encoder",
        metavar="ENCODER_JSON",
        help="English BART: name dict.txt symbols by GPT-2 id (fairseq's GPT-2 BPE)",
    )
    args = parser.parse_args(argv)
    try:
        report = convert(args.hf_dir, args.output_dir, args.force, args.gpt2_encoder)
    except HashEEError as err:
        sys.exit(f"error: {err}")
    print(
        f"{report['family'].upper()} checkpoint -> {args.output_dir}/model.pt, dict.txt "
        f"({report['symbols']} symbols, {report['vocab']} vocabulary)"
    )
    print(f"dropped: {'; '.join(report['dropped']) or 'nothing'}")
    print(
        f"fine-tune with: fairseq-train ... --user-dir fairseq_hashee --task hashee_summarization "
        f"--arch {report['arch']} {report['options']} --restore-file {args.output_dir}/model.pt {RESET_FLAGS}"
    )


if __name__ == "__main__":
    main()
