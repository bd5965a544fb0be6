"""Static truncation: a stack restored from a deeper checkpoint keeps k of its L layers.

The paper's static baseline (BART-6L, CPT-6L; docs/design.md section 7) is the
pretrained model with half its layers, fine-tuned: no exits at run time.
``--encoder-layers k`` (``--decoder-layers k``) with ``--restore-file`` of a
checkpoint whose stack has more layers keeps ``--keep-encoder-layers``
(``--keep-decoder-layers``) of them: ``first`` (default: layers 1..k),
``spread`` (k layers evenly spaced, the last one included) or a list of
1-based layers. The stack remembers the depth it was cut from (its
``full_depth`` buffer, saved with every checkpoint after), so the speed-up
report compares it with the full model.
"""

import logging
import re
from typing import Dict, List

import numpy as np

from ..errors import HashEEError

logger = logging.getLogger(__name__)

KEEP_CHOICES = ("first", "spread")


def kept_layers(spec: str, keep: int, available: int, option: str) -> List[int]:
    """The 1-based layers of ``available`` that ``spec`` keeps, ``keep`` of them, ascending."""
    if keep < 1:
        raise HashEEError(f"{option}: a truncated stack must keep at least one layer, got {keep}")
    if spec == "first":
        return list(range(1, keep + 1))
    if spec == "spread":
        return sorted({int(round(x)) for x in np.linspace(available / keep, available, keep)})
    try:
        layers = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise HashEEError(
            f"{option}: expected first, spread or a comma-separated list of layers, got {spec!r}"
        ) from None
    if len(layers) != keep or len(set(layers)) != keep:
        raise HashEEError(f"{option}: lists {len(set(layers))} distinct layers, the model has {keep}")
    bad = [layer for layer in layers if not 1 <= layer <= available]
    if bad:
        raise HashEEError(f"{option}: layer(s) {bad} outside the checkpoint's layers 1..{available}")
    return sorted(layers)


def checkpoint_depth(state_dict: Dict, stack_prefix: str) -> int:
    """How many layers the checkpoint's stack has (0 if none)."""
    pattern = re.compile(re.escape(stack_prefix) + r"layers\.(\d+)\.")
    found = [int(m.group(1)) for key in state_dict for m in [pattern.match(key)] if m]
    return max(found) + 1 if found else 0


def truncate_stack(state_dict: Dict, stack_prefix: str, stack, spec: str, option: str) -> None:
    """Keep ``stack``'s layers of a deeper checkpoint in ``state_dict`` (in place), renumbered.

    What is tied to the old depth goes: the exit table (its layers may lie above
    the new top; the task's table is kept) and the decoder's exit heads and rule
    (rebuilt from the kept model, as for a released checkpoint).
    """
    depth = checkpoint_depth(state_dict, stack_prefix)
    if depth <= stack.num_layers:
        return
    keep = kept_layers(spec, stack.num_layers, depth, option)
    pattern = re.compile(re.escape(stack_prefix) + r"layers\.(\d+)\.(.*)")
    renumber = {old - 1: new for new, old in enumerate(keep)}
    for key in list(state_dict):
        match = pattern.match(key)
        if match:
            tensor = state_dict.pop(key)
            old = int(match.group(1))
            if old in renumber:
                state_dict[f"{stack_prefix}layers.{renumber[old]}.{match.group(2)}"] = tensor
        elif key.startswith((f"{stack_prefix}exit_table", f"{stack_prefix}exit_heads.", f"{stack_prefix}exit_rule.")):
            del state_dict[key]
    full = state_dict.get(f"{stack_prefix}full_depth")
    state_dict[f"{stack_prefix}full_depth"] = stack.full_depth.new_tensor(depth if full is None else int(full))
    logger.info(f"{stack.stack_name}: keeping layers {','.join(map(str, keep))} of the checkpoint's {depth}")
