"""Loading fairseq checkpoints safely, and saying clearly why one does not fit.

torch >= 2.6 loads checkpoints with ``weights_only=True``: only tensors,
containers and an allow-list of classes may be unpickled. fairseq checkpoints
carry an ``argparse.Namespace`` (the model config of legacy architectures such
as BART), so fairseq-train/-generate/-interactive fail to load them. Rather
than switching the restricted unpickler off, we add the few harmless classes
fairseq needs to its allow-list; a checkpoint that smuggles in any other
callable is still refused by torch.

A file torch cannot load at all (truncated, damaged, not written by torch.save)
gets one line naming it, the same from our commands (``load_checkpoint``) and
from fairseq's (``name_unloadable_checkpoints``), and never torch's advice to
turn ``weights_only`` off: the file is broken, and that advice would run
whatever it holds. A checkpoint that is not there gets one line too
(``refuse_missing_checkpoints``): fairseq-generate's is a traceback, and
fairseq-train given a ``--restore-file`` that does not exist silently trains
from random weights.
"""

import argparse
import functools
import os
import zipfile
from typing import Dict, Mapping

import torch

from .errors import HashEEError

# Plain data classes found in fairseq 0.12 checkpoints (model and task configs).
FAIRSEQ_CHECKPOINT_GLOBALS = [argparse.Namespace]

# The first bytes of what torch.save writes: a zip archive (torch >= 1.6), or a pickle stream
# (the legacy format of older releases, protocol 2 or above: the PROTO opcode).
ZIP_MAGIC, PICKLE_PROTO = b"PK\x03\x04", b"\x80"

MISSING = "no such checkpoint file"


def allow_fairseq_checkpoint_globals() -> None:
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:  # torch < 2.4 does not restrict unpickling by default
        add(FAIRSEQ_CHECKPOINT_GLOBALS)


# Where torch's messages turn from what is wrong to advice: what the file holds is refused or
# damaged, so none of it applies (it is never to turn weights_only off).
_TORCH_ADVICE = (" Please use", " This is an internal miniz error", "  (Could this error message be improved")


def _torch_reason(err: Exception) -> str:
    """What torch's error says is wrong, without its advice: the restricted unpickler's own
    finding when it refused something (after "WeightsUnpickler error:", or the paragraph of a
    "Weights only load failed" message that names what it met), else the message's first line."""
    text = str(err).strip()
    refused = "WeightsUnpickler error:" in text or text.startswith("Weights only load failed")
    finding = text.partition("WeightsUnpickler error:")[2].strip()
    for paragraph in [finding] if finding else text.split("\n\n"):
        line = paragraph.strip().splitlines()[0] if paragraph.strip() else ""
        for advice in _TORCH_ADVICE:
            line = line.split(advice)[0].strip()
        if line and "weights_only" not in line and not line.startswith("Weights only load failed"):
            return "torch's safe loader refused it: " + line if refused else line
    return type(err).__name__


def unloadable(path: str, err: Exception) -> HashEEError:
    """The one line for a checkpoint file torch.load failed on: what the file is, from its first
    bytes where they tell (empty, not torch's format, a zip archive cut short), else torch's reason."""
    try:
        with open(path, "rb") as source:
            head = source.read(16)
    except OSError:
        head = PICKLE_PROTO  # unreadable here (fairseq may have given torch a local copy): torch's reason
    if not head:
        reason = "the file is empty"
    elif not head.startswith((ZIP_MAGIC, PICKLE_PROTO)):
        reason = f"not a file torch.save writes: it starts with {head!r}"
    elif head.startswith(ZIP_MAGIC) and not zipfile.is_zipfile(path):
        reason = "truncated or damaged: the zip archive torch.save writes ends in a directory this file lacks"
    else:
        reason = _torch_reason(err)
    return HashEEError(f"{path}: cannot be loaded as a fairseq checkpoint ({reason})")


def load_checkpoint(path: str) -> Dict:
    """A fairseq checkpoint (model state, config, optimizer history), loaded with pickle safety on."""
    if not os.path.isfile(path):
        raise HashEEError(f"{path}: {MISSING}")
    allow_fairseq_checkpoint_globals()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a broken file fails anywhere in the unpickler (KeyError, EOFError, ...)
        raise unloadable(path, err) from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise HashEEError(f"{path}: not a fairseq checkpoint (no 'model' state dict)")
    return state


def _raised_in_torch_load(err: Exception) -> bool:
    traceback = err.__traceback__
    while traceback is not None:
        if traceback.tb_frame.f_code is torch.serialization.load.__code__:
            return True
        traceback = traceback.tb_next
    return False


def name_unloadable_checkpoints() -> None:
    """Have fairseq's commands (fairseq-generate, -interactive, -train's --restore-file, the hub
    interface) report a checkpoint torch cannot load as ``load_checkpoint`` does. They all load
    through ``checkpoint_utils.load_checkpoint_to_cpu``, whose torch.load gets an open file and
    fails with torch's message alone; only errors raised inside that torch.load are translated."""
    from fairseq import checkpoint_utils

    original = checkpoint_utils.load_checkpoint_to_cpu
    if getattr(original, "_hashee", False):
        return

    @functools.wraps(original)
    def load_checkpoint_to_cpu(path, *args, **kwargs):
        try:
            return original(path, *args, **kwargs)
        except Exception as err:
            if not _raised_in_torch_load(err):
                raise
            raise unloadable(path, err) from None

    load_checkpoint_to_cpu._hashee = True
    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu


def refuse_missing_checkpoints() -> None:
    """Have fairseq's commands name a checkpoint that is not there in one line: ``--path`` of
    fairseq-generate and -interactive (fairseq raises "Model file not found" with a traceback),
    and an explicit ``--restore-file`` of fairseq-train, which fairseq would skip with a log line
    and then fine-tune nothing: a mistyped path to BART must not cost a run from scratch."""
    from fairseq import checkpoint_utils
    from fairseq.file_io import PathManager

    load_ensemble, load_training = checkpoint_utils.load_model_ensemble_and_task, checkpoint_utils.load_checkpoint
    if getattr(load_ensemble, "_hashee", False):
        return

    @functools.wraps(load_ensemble)
    def load_model_ensemble_and_task(*args, **kwargs):
        try:
            return load_ensemble(*args, **kwargs)
        except OSError as err:
            _, found, path = str(err).partition("Model file not found: ")
            if not found or type(err) is not OSError:
                raise
            raise HashEEError(f"{path}: {MISSING}") from None

    @functools.wraps(load_training)
    def load_checkpoint(cfg, trainer, *args, **kwargs):
        if cfg.restore_file != "checkpoint_last.pt":  # fairseq's default: resume when it exists
            suffix = trainer.checkpoint_suffix
            path = cfg.restore_file.replace(".pt", suffix + ".pt") if suffix is not None else cfg.restore_file
            if not PathManager.exists(path):
                raise HashEEError(f"--restore-file {path}: {MISSING}")
        return load_training(cfg, trainer, *args, **kwargs)

    load_model_ensemble_and_task._hashee = True
    checkpoint_utils.load_model_ensemble_and_task = load_model_ensemble_and_task
    checkpoint_utils.load_checkpoint = load_checkpoint


def load_model_state(path: str) -> Dict[str, torch.Tensor]:
    """The ``model`` state dict of a fairseq checkpoint, loaded with pickle safety on."""
    return load_checkpoint(path)["model"]


def describe_shape(state: Mapping[str, torch.Tensor]) -> str:
    """'6+6 layers, dim 768, 50265 symbols' (or what of it the state dict shows)."""

    def layers(stack):
        return len({key.split(".")[2] for key in state if key.startswith(f"{stack}.layers.")})

    parts = [f"{layers('encoder')}+{layers('decoder')} layers"]
    embeddings = state.get("encoder.embed_tokens.weight")
    if embeddings is not None and embeddings.dim() == 2:
        parts += [f"dim {embeddings.size(1)}", f"{embeddings.size(0)} symbols"]
    return ", ".join(parts)


def describe_mismatch(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> str:
    """One line listing what keeps ``found`` (a checkpoint) from loading into ``expected``."""

    def sample(keys):
        keys = sorted(keys)
        more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
        return ", ".join(keys[:3]) + more

    missing = set(expected) - set(found)
    unexpected = set(found) - set(expected)
    # Exit tables first: their size is the dictionary's, the usual culprit.
    reshaped = sorted(
        (k for k in set(expected) & set(found) if tuple(expected[k].shape) != tuple(found[k].shape)),
        key=lambda k: (not k.endswith("exit_table"), k),
    )
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} parameters: {sample(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected parameters: {sample(unexpected)}")
    if reshaped:
        shown = [
            f"{k} is {'x'.join(map(str, found[k].shape))} in the checkpoint, "
            f"{'x'.join(map(str, expected[k].shape))} in the model"
            for k in reshaped[:3]
        ]
        more = f" (+{len(reshaped) - 3} more)" if len(reshaped) > 3 else ""
        parts.append("shape mismatch: " + "; ".join(shown) + more)
    return "; ".join(parts) if parts else "parameters match but loading failed"
