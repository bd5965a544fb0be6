"""The checkpoint every method of a comparison starts from, checked before anything is trained.

With ``--restore-file`` it is that checkpoint; without, a full-depth model the
comparison trains from scratch on the same data. Either way the exit tables
are taken out of the copy the methods start from: a restored table is kept by
the model (resuming must keep a model's exits), so a HashEE method would
otherwise inherit the start's exits instead of building its own.
"""

import argparse
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

from fairseq.data import Dictionary

from ..checkpoints import describe_shape, load_checkpoint
from ..errors import HashEEError
from ..models.truncation import checkpoint_depth
from .methods import SMOOTHED
from .runs import Data, save_without_tables, train_stage

# Present in CPT's encoder (BERT's token types), absent from BART's.
CPT_KEY = "encoder.embed_token_types.weight"


def _model_depths(arch: str, model_options: Sequence[str]) -> Tuple[int, int]:
    from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY

    import fairseq_hashee  # noqa: F401  (registers the architectures)

    if arch not in ARCH_MODEL_REGISTRY or not arch.startswith("hashee_"):
        known = sorted(a for a in ARCH_MODEL_REGISTRY if a.startswith("hashee_"))
        raise HashEEError(f"--arch: {arch!r} is not a HashEE architecture; expected one of {', '.join(known)}")
    parser = argparse.ArgumentParser(argument_default=argparse.SUPPRESS, add_help=False, allow_abbrev=False)
    ARCH_MODEL_REGISTRY[arch].add_args(parser)
    parsed, unknown = parser.parse_known_args(list(model_options))
    if unknown:
        raise HashEEError(f"--model-args: {' '.join(unknown)} is not an option of {arch}")
    ARCH_CONFIG_REGISTRY[arch](parsed)
    return parsed.encoder_layers, parsed.decoder_layers


def stack_depths(
    arch: str, model_options: Sequence[str], restore_file: Optional[str], restored: Optional[dict]
) -> Tuple[int, int]:
    """Encoder and decoder layers of the compared model; ``restored`` (the checkpoint loaded from
    ``restore_file``) must have them."""
    depths = _model_depths(arch, model_options)
    if restored is not None:
        state = restored["model"]
        if "encoder.layers.0.fc1.weight" not in state or "decoder.layers.0.encoder_attn.k_proj.weight" not in state:
            raise HashEEError(
                f"--restore-file: {restore_file} is not a BART or CPT checkpoint (no encoder/decoder layers)"
            )
        is_cpt, wants_cpt = CPT_KEY in state, arch.startswith("hashee_cpt")
        if is_cpt != wants_cpt:
            family = "a CPT" if is_cpt else "a BART"
            raise HashEEError(f"--restore-file: {restore_file} is {family} checkpoint; --arch {arch} cannot load it")
        found = checkpoint_depth(state, "encoder."), checkpoint_depth(state, "decoder.")
        if found != depths:
            raise HashEEError(
                f"--restore-file: {restore_file} ({describe_shape(state)}) is not the {depths[0]}+{depths[1]}-layer "
                f"model --arch {arch} {' '.join(model_options)} builds"
            )
    return depths


def _check_dictionaries(checkpoint: str, state: dict, data: Data) -> None:
    for side, lang in (("encoder", data.source_lang), ("decoder", data.target_lang)):
        rows = state["model"][f"{side}.embed_tokens.weight"].size(0)
        dictionary = Path(data.path) / f"dict.{lang}.txt"
        size = len(Dictionary.load(str(dictionary)))
        if rows != size:
            raise HashEEError(
                f"--restore-file: {checkpoint} has {rows} {side} embeddings but {dictionary} has {size} symbols; "
                "binarize the data with the checkpoint's dictionary (fairseq-preprocess --srcdict/--tgtdict)"
            )


def starting_checkpoint(
    args, data: Data, work: Path, encoder_layers: int, restored: Optional[dict], say: Callable[[str], None]
) -> Tuple[Path, str]:
    """WORK/start.pt (``restored``, the loaded ``--restore-file``, or a full-depth model trained
    here, without exit tables) and a description of it; every checkpoint is read once."""
    start = work / "start.pt"
    if start.exists():
        state = load_checkpoint(str(start))
    else:
        if restored is not None:
            source, state = args.restore_file, restored
        else:
            updates = args.base_updates or args.max_update
            say(f"== [base] train the full-depth model every method starts from: {updates} updates from scratch")
            no_exits = ("--encoder-exit-layers", str(encoder_layers))
            source = str(train_stage(data, work / "train" / "base", None, no_exits + SMOOTHED, updates, say=say))
            state = load_checkpoint(source)
        _check_dictionaries(source, state, data)
        save_without_tables(state, start)
    return start, f"{start} ({describe_shape(state['model'])})"
