"""The one line a checkpoint file torch cannot load gets (checkpoints.py), from our loader and from
fairseq's through the plugin's hook; the end-to-end runs of fairseq-generate, fairseq-interactive
and hashee-calibrate on such files are in test_bad_inputs.py."""

import argparse

import pytest
import torch
from fairseq import checkpoint_utils

from fairseq_hashee.checkpoints import load_checkpoint
from fairseq_hashee.errors import HashEEError


class Smuggled:
    """A class no allow-list names: torch's restricted unpickler refuses it."""


def _write(path, kind):
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("gpu hours: 12\n")
    elif kind in ("truncated", "whole"):
        torch.save({"model": {"w": torch.zeros(64)}, "args": argparse.Namespace(arch="tiny")}, path)
        if kind == "truncated":
            path.write_bytes(path.read_bytes()[:300])
    elif kind == "smuggled":
        torch.save({"model": {}, "extra": Smuggled()}, path)
    elif kind == "tensor":
        torch.save(torch.zeros(2), path)


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("empty", "cannot be loaded as a fairseq checkpoint (the file is empty)"),
        ("text", "cannot be loaded as a fairseq checkpoint (not a file torch.save writes: it starts with b'gpu hou"),
        (
            "truncated",
            "cannot be loaded as a fairseq checkpoint (truncated or damaged: the zip archive torch.save writes "
            "ends in a directory this file lacks)",
        ),
        (
            "smuggled",
            "cannot be loaded as a fairseq checkpoint (torch's safe loader refused it: Unsupported global: "
            "GLOBAL test_checkpoints.Smuggled was not an allowed global by default.)",
        ),
    ],
)
def test_a_file_torch_cannot_load_gets_one_line_naming_it(tmp_path, kind, reason):
    path = tmp_path / "model.pt"
    _write(path, kind)
    with pytest.raises(HashEEError) as ours:
        load_checkpoint(str(path))
    assert str(ours.value).startswith(f"{path}: {reason}")
    assert "\n" not in str(ours.value) and "weights_only" not in str(ours.value)
    # fairseq's commands load through checkpoint_utils: the same line
    with pytest.raises(HashEEError) as theirs:
        checkpoint_utils.load_checkpoint_to_cpu(str(path))
    assert str(theirs.value) == str(ours.value)


def test_files_torch_loads_are_left_to_the_callers(tmp_path):
    """Only errors raised inside torch.load are translated: what fairseq then makes of the state is
    fairseq's (and a loaded file that is no checkpoint is load_checkpoint's own line)."""
    path = tmp_path / "model.pt"
    _write(path, "whole")
    assert load_checkpoint(str(path))["args"].arch == "tiny"
    with pytest.raises(KeyError):  # fairseq's upgrade step expects a training history
        checkpoint_utils.load_checkpoint_to_cpu(str(path))
    _write(path, "tensor")
    with pytest.raises(HashEEError, match=r": not a fairseq checkpoint \(no 'model' state dict\)$"):
        load_checkpoint(str(path))
    with pytest.raises(HashEEError, match=": no such checkpoint file$"):
        load_checkpoint(str(tmp_path / "missing.pt"))
