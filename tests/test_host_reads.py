"""Host synchronisations: one per encoder forward and per decoder step for hash exits.

Every layer's plan comes from one read of the exits' counts (docs/design.md
section 3), and the padding check rides on it; a dynamic rule reads once more
per layer at which it decides. Counted as the calls that copy device values
to the host: Tensor.tolist/item/__bool__/__int__/__float__ and nonzero
without a static size.
"""

import contextlib

import pytest
import torch

from helpers import build_hashee, random_batch, random_tables, tiny_dictionary

LAYERS = 4
READS = ("tolist", "item", "__bool__", "__int__", "__float__", "nonzero")


@contextlib.contextmanager
def counting_reads(monkeypatch):
    counted = {"reads": 0}
    with monkeypatch.context() as patch:
        for name in READS:
            original = getattr(torch.Tensor, name)

            def read(tensor, *args, _original=original, **kwargs):
                counted["reads"] += 1
                return _original(tensor, *args, **kwargs)

            patch.setattr(torch.Tensor, name, read)
        yield counted


def _decode(model, monkeypatch, steps=6, bsz=3):
    dictionary = model.decoder.dictionary
    gen = torch.Generator().manual_seed(0)
    src, src_lengths, _ = random_batch(dictionary, gen, bsz=bsz)
    tokens = torch.randint(dictionary.nspecial, len(dictionary), (bsz, steps), generator=gen)
    tokens[:, 0] = dictionary.eos()
    reads = []
    with torch.no_grad():
        with counting_reads(monkeypatch) as counted:
            encoder_out = model.encoder(src, src_lengths)
        reads.append(counted["reads"])
        state = {}
        for step in range(steps):
            with counting_reads(monkeypatch) as counted:
                model.decoder(tokens[:, : step + 1], encoder_out=encoder_out, incremental_state=state)
            reads.append(counted["reads"])
    return reads


@pytest.mark.parametrize("tables", ["none", "hash"])
def test_one_read_per_encoder_forward_and_decoder_step(monkeypatch, tables):
    model = build_hashee(tiny_dictionary(), layers=LAYERS)
    if tables == "hash":
        random_tables(model, torch.Generator().manual_seed(1))
        assert not model.decoder.no_early_exits
    assert _decode(model, monkeypatch) == [1] * 7


def test_a_rule_reads_once_more_per_deciding_layer(monkeypatch):
    model = build_hashee(tiny_dictionary(), layers=LAYERS, decoder_exit_rule="dat-halting")
    model.decoder.exit_rule.set_threshold(1.0)  # never fires: every layer below the top decides
    encoder, *steps = _decode(model, monkeypatch)
    assert encoder == 1 and steps == [1 + (LAYERS - 1)] * len(steps)


def test_searched_heads_read_their_choice_once(monkeypatch):
    """The chosen architectures are read from the ``choice`` buffer once, not at every head; the
    logits of positions exited at different layers are grouped with one read."""
    model = build_hashee(tiny_dictionary(), layers=LAYERS, decoder_exit_rule="agreement", exit_heads="searched")
    model.decoder.exit_heads.select([1, 2, 3])  # linear, mlp, pooler below the top
    model.decoder.exit_rule.set_threshold(1.0)  # never fires: every layer below the top decides
    encoder, first, *steps = _decode(model, monkeypatch)
    per_step = 1 + (LAYERS - 1) + 1  # the plan, each deciding layer, the heads' grouping
    assert encoder == 1 and first == per_step + 1 and steps == [per_step] * len(steps)  # + choice, once
