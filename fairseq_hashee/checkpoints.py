"""Loading fairseq checkpoints safely, and saying clearly why one does not fit.

torch >= 2.6 loads checkpoints with ``weights_only=True``: only tensors,
containers and an allow-list of classes may be unpickled. fairseq checkpoints
carry an ``argparse.Namespace`` (the model config of legacy architectures such
as BART), so fairseq-train/-generate/-interactive fail to load them. Rather
than switching the restricted unpickler off, we add the few harmless classes
fairseq needs to its allow-list; a checkpoint that smuggles in any other
callable is still refused by torch.
"""

import argparse
import os
import pickle
from typing import Dict, Mapping

import torch

from .errors import HashEEError

# Plain data classes found in fairseq 0.12 checkpoints (model and task configs).
FAIRSEQ_CHECKPOINT_GLOBALS = [argparse.Namespace]


def allow_fairseq_checkpoint_globals() -> None:
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:  # torch < 2.4 does not restrict unpickling by default
        add(FAIRSEQ_CHECKPOINT_GLOBALS)


def load_checkpoint(path: str) -> Dict:
    """A fairseq checkpoint (model state, config, optimizer history), loaded with pickle safety on."""
    if not os.path.isfile(path):
        raise HashEEError(f"{path}: no such checkpoint file")
    allow_fairseq_checkpoint_globals()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HashEEError(f"{path}: cannot be loaded as a fairseq checkpoint ({reason})") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise HashEEError(f"{path}: not a fairseq checkpoint (no 'model' state dict)")
    return state


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
