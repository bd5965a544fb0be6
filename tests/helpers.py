"""Tiny models, batches and command runs shared by the tests (the fixtures are in conftest.py).

Models are built through the registered architectures (fairseq's ``bart_base``
and ours) with tiny dimensions; the stock fairseq BART is the reference the
HashEE model must reproduce when every token exits at the last layer.
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fairseq.data import Dictionary
from fairseq.models.bart import BARTModel
from fairseq.models.bart.model import bart_base_architecture

import fairseq_hashee
from fairseq_hashee.models.hashee_bart import HashEEBARTModel, hashee_bart_base_architecture

USER_DIR = str(Path(fairseq_hashee.__file__).parent)
REPO = Path(__file__).resolve().parent.parent
VOCAB = 48


# (device, dtype, tolerance) the exit paths are checked in: fp32 to 1e-5, half
# precision to 1e-2 (bf16 keeps 8 bits of mantissa; the tiny models' logits
# are below 1), on the GPU too when there is one.
PRECISIONS = [
    pytest.param("cpu", torch.float32, 1e-5, id="cpu-fp32"),
    pytest.param("cpu", torch.bfloat16, 1e-2, id="cpu-bf16"),
]
if torch.cuda.is_available():
    PRECISIONS += [
        pytest.param("cuda", dtype, 1e-2, id=f"cuda-{name}")
        for dtype, name in ((torch.float16, "fp16"), (torch.bfloat16, "bf16"))
    ]


def tiny_dictionary(size: int = VOCAB) -> Dictionary:
    d = Dictionary()
    for i in range(size - len(d)):
        d.add_symbol(f"w{i}")
    return d


def tiny_args(layers: int = 3, **overrides) -> argparse.Namespace:
    args = argparse.Namespace(
        encoder_embed_dim=16,
        encoder_ffn_embed_dim=32,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        max_source_positions=64,
        max_target_positions=64,
        dropout=0.0,
        task="translation",
    )
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


class TinyTask:
    def __init__(self, dictionary):
        self.source_dictionary = self.target_dictionary = dictionary


def build_pair(dictionary, seed: int = 0, **overrides):
    """A stock fairseq BART and a HashEE BART with the same (random) weights."""
    torch.manual_seed(seed)
    args = tiny_args(**overrides)
    bart_base_architecture(args)
    reference = BARTModel.build_model(args, TinyTask(dictionary))
    args = tiny_args(**overrides)
    hashee_bart_base_architecture(args)
    model = HashEEBARTModel.build_model(args, TinyTask(dictionary))
    model.load_state_dict(reference.state_dict())
    return reference.eval(), model.eval()


def build_hashee(dictionary, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    args = tiny_args(**overrides)
    hashee_bart_base_architecture(args)
    return HashEEBARTModel.build_model(args, TinyTask(dictionary)).eval()


def random_tables(model, generator: torch.Generator, low: int = 1, draw_sets: bool = False):
    """Random exit tables for both stacks, special symbols at the last layer.

    With ``draw_sets`` about half the symbols get a random draw set instead of
    a layer (random-incons entries: a layer is drawn for every occurrence).
    """
    for stack in (model.encoder, model.decoder):
        size, top = len(stack.dictionary), stack.num_layers
        table = torch.randint(low, top + 1, (size,), generator=generator)
        if draw_sets:
            masks = torch.randint(1, 1 << top, (size,), generator=generator)
            table = torch.where(torch.rand(size, generator=generator) < 0.5, -masks, table)
        table[: stack.dictionary.nspecial] = top
        stack.set_exit_table(table)


def random_batch(dictionary, generator: torch.Generator, bsz=4, src_len=9, tgt_len=7, device="cpu"):
    """Left-padded sources and right-padded targets of mixed lengths, as fairseq batches them."""
    pad, eos, nspecial = dictionary.pad(), dictionary.eos(), dictionary.nspecial
    src = torch.randint(nspecial, len(dictionary), (bsz, src_len), generator=generator)
    prev = torch.randint(nspecial, len(dictionary), (bsz, tgt_len), generator=generator)
    src_lengths = torch.randint(2, src_len + 1, (bsz,), generator=generator)
    src_lengths[0] = src_len
    tgt_lengths = torch.randint(2, tgt_len + 1, (bsz,), generator=generator)
    tgt_lengths[0] = tgt_len
    for row in range(bsz):
        src[row, : src_len - src_lengths[row]] = pad
        src[row, -1] = eos
        prev[row, 0] = eos
        prev[row, tgt_lengths[row] :] = pad
    return src.to(device), src_lengths.to(device), prev.to(device)


def training_sample(dictionary, seed: int = 0, bsz: int = 3, ids=None):
    """A criterion's sample as fairseq collates it: a random batch, random references, example ids."""
    gen = torch.Generator().manual_seed(seed)
    src, src_lengths, prev = random_batch(dictionary, gen, bsz=bsz)
    target = torch.randint(dictionary.nspecial, len(dictionary), prev.shape, generator=gen)
    target[prev.eq(dictionary.pad())] = dictionary.pad()
    net_input = {"src_tokens": src, "src_lengths": src_lengths, "prev_output_tokens": prev}
    return {
        "id": torch.arange(bsz) if ids is None else torch.tensor(ids),
        "net_input": net_input,
        "target": target,
        "ntokens": int(target.ne(dictionary.pad()).sum()),
    }


def set_exit_impl(model, impl: str):
    model.encoder.exit_impl = impl
    model.decoder.exit_impl = impl


def run_cli(module: str, *args, check=True, timeout=600, env=None):
    """Run a fairseq (or our) command-line module in a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc
