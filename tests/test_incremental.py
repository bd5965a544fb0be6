"""Incremental decoding gives, at every step, what the teacher-forced forward gives.

This is the KV-cache invariant of docs/design.md section 4, checked for random
tables with decoder exits on, several sentences and beams, beam reordering
(also with fairseq's beamable cross-attention) and both exit paths; and for
draw-set (random-incons) tables, whose exits are drawn as each position comes
in, with the teacher-forced pass replaying the exits the steps drew.
"""

import pytest
import torch
from fairseq.sequence_generator import SequenceGenerator

from fairseq_hashee.modules import kv_cache

from helpers import PRECISIONS, build_hashee, random_batch, random_tables, set_exit_impl, tiny_dictionary

ATOL = 1e-5


def _beam_reorder(gen, bsz, beam):
    """A beam-search style reordering: each hypothesis continues one of its sentence's beams."""
    picks = torch.randint(0, beam, (bsz, beam), generator=gen)
    return (torch.arange(bsz)[:, None] * beam + picks).view(-1)


class _ExitRecorder:
    """Wraps a stack's ``token_exits``: records what incremental steps draw, and
    makes the teacher-forced pass use exactly those exits."""

    def __init__(self, stack, rows, steps):
        self.lookup = stack.token_exits
        self.drawn = torch.zeros(rows, steps, dtype=torch.long, device=stack.exit_table.device)
        self.replay = False
        stack.token_exits = self

    def __call__(self, tokens):
        if self.replay:
            return self.drawn[:, : tokens.size(1)]
        exits = self.lookup(tokens)  # (rows, 1): the new position
        self.drawn[:, self.step] = exits[:, 0]
        return exits


@pytest.mark.parametrize("impl", ["skip", "masked"])
@pytest.mark.parametrize("beamable", [False, True])
@pytest.mark.parametrize(
    "seed, tables", [(0, "random"), (1, "random"), (2, "random"), (3, "draw-sets"), (4, "mostly-layer-1")]
)
@pytest.mark.parametrize("device, dtype, atol", PRECISIONS)
def test_incremental_equals_teacher_forced(impl, beamable, seed, tables, device, dtype, atol):
    dictionary = tiny_dictionary()
    model = build_hashee(dictionary, seed=seed, layers=4)
    gen = torch.Generator().manual_seed(seed)
    draw_sets = tables == "draw-sets"
    random_tables(model, gen, draw_sets=draw_sets)
    if tables == "mostly-layer-1":
        # Most steps then leave the upper layers without a query: their keys
        # and values wait and are projected later in one batch.
        table = model.decoder.exit_table.clone()
        table[torch.rand(len(table), generator=gen) < 0.85] = 1
        table[: dictionary.nspecial] = model.decoder.num_layers
        model.decoder.set_exit_table(table)
    deferred = 0
    set_exit_impl(model, impl)
    model.to(device=device, dtype=dtype)
    bsz, beam, steps = 3, 2, 9
    src, src_lengths, _ = random_batch(dictionary, gen, bsz=bsz, src_len=10, device=device)
    expand = torch.arange(bsz, device=device).repeat_interleave(beam)
    if beamable:
        model.set_beam_size(beam)

    tokens = torch.randint(dictionary.nspecial, len(dictionary), (bsz * beam, steps), generator=gen).to(device)
    tokens[:, 0] = dictionary.eos()
    with torch.no_grad():
        encoder_out = model.encoder(src, src_lengths)
        # Beamable attention keeps one encoder row per sentence; otherwise one per hypothesis.
        if not beamable:
            encoder_out = model.encoder.reorder_encoder_out(encoder_out, expand)
        full_encoder_out = (
            model.encoder.reorder_encoder_out(model.encoder(src, src_lengths), expand) if beamable else encoder_out
        )
        state = {}
        recorder = _ExitRecorder(model.decoder, bsz * beam, steps) if draw_sets else None
        for step in range(steps):
            if step in (3, 6):
                order = _beam_reorder(gen, bsz, beam).to(device)
                model.decoder.reorder_incremental_state_scripting(state, order)
                tokens[:, :step] = tokens[order, :step]
                if recorder:
                    recorder.drawn[:, :step] = recorder.drawn[order, :step]
            if recorder:
                recorder.step, recorder.replay = step, False
            step_out = model.decoder(tokens[:, : step + 1], encoder_out=encoder_out, incremental_state=state)[0]
            if recorder:
                recorder.replay = True
            forced = _teacher_forced(model, tokens[:, : step + 1], full_encoder_out)
            assert (step_out[:, 0] - forced[:, step]).float().abs().max() < atol, step
            cache = kv_cache.SelfAttentionCache.of(model.decoder, state)  # the skip path's
            if cache is not None:
                deferred += sum(cache.waiting(layer.self_attn) > 0 for layer in model.decoder.layers)
    if tables == "mostly-layer-1" and impl == "skip":
        assert deferred > 0


@pytest.mark.parametrize("tables", ["random", "mostly-layer-1"])
def test_incremental_with_the_cache_growing_every_other_step(monkeypatch, tables):
    """The cache's storage grows in blocks of ``GROWTH`` positions; with blocks of 2,
    keys, waiting inputs and the ancestry map all grow between reorders."""
    monkeypatch.setattr(kv_cache, "GROWTH", 2)
    test_incremental_equals_teacher_forced("skip", True, 4, tables, "cpu", torch.float32, ATOL)


def test_a_padded_position_among_the_keys(monkeypatch):
    """A forced prefix shorter than another leaves padding in ``prev_output_tokens``. fairseq's
    positions then differ between its teacher-forced and incremental forward, so the skip path's
    steps are checked against fairseq's own layers and cache stepping the same tokens (``masked``)."""
    monkeypatch.setattr(kv_cache, "GROWTH", 2)
    dictionary = tiny_dictionary()
    model = build_hashee(dictionary, seed=6, layers=4)
    gen = torch.Generator().manual_seed(6)
    random_tables(model, gen)
    bsz, beam, steps = 2, 2, 7
    src, src_lengths, _ = random_batch(dictionary, gen, bsz=bsz, src_len=8)
    tokens = torch.randint(dictionary.nspecial, len(dictionary), (bsz * beam, steps), generator=gen)
    tokens[:, 0] = dictionary.eos()
    tokens[1, 2] = tokens[3, 4] = dictionary.pad()
    orders = {3: _beam_reorder(gen, bsz, beam), 5: _beam_reorder(gen, bsz, beam)}
    outputs = {}
    with torch.no_grad():
        encoder_out = model.encoder.reorder_encoder_out(
            model.encoder(src, src_lengths), torch.arange(bsz).repeat_interleave(beam)
        )
        for impl in ("masked", "skip"):
            set_exit_impl(model, impl)
            prev, state, steps_out = tokens.clone(), {}, []
            for step in range(steps):
                if step in orders:
                    model.decoder.reorder_incremental_state_scripting(state, orders[step])
                    prev[:, :step] = prev[orders[step], :step]
                out = model.decoder(prev[:, : step + 1], encoder_out=encoder_out, incremental_state=state)[0]
                steps_out.append(out)
            outputs[impl] = torch.cat(steps_out, dim=1)
    # A padded position's own output is never read (fairseq's stock layer updates it, masked leaves it).
    real = tokens.ne(dictionary.pad())  # step t's output is of position t, which no reorder before t moves
    assert (outputs["skip"] - outputs["masked"])[real].abs().max() < ATOL


def _teacher_forced(model, prev, encoder_out):
    beam = model.decoder.layers[0].encoder_attn.beam_size
    try:  # a teacher-forced pass must never use the beamable shortcut
        model.decoder.set_beam_size(1)
        return model.decoder(prev, encoder_out=encoder_out)[0]
    finally:
        model.decoder.set_beam_size(beam)


@pytest.mark.parametrize("seed", range(2))
def test_beam_search_scores_equal_teacher_forced_scores(seed):
    """fairseq's SequenceGenerator on HashEE: each hypothesis re-scored by teacher forcing."""
    dictionary = tiny_dictionary()
    model = build_hashee(dictionary, seed=seed, layers=3)
    gen = torch.Generator().manual_seed(10 + seed)
    random_tables(model, gen)
    src, src_lengths, _ = random_batch(dictionary, gen, bsz=4, src_len=8)
    generator = SequenceGenerator([model], dictionary, beam_size=4, max_len_b=10)
    with torch.no_grad():
        hypos = generator.generate([model], {"net_input": {"src_tokens": src, "src_lengths": src_lengths}})
        model.decoder.set_beam_size(1)
        for row, row_hypos in enumerate(hypos):
            for hypo in row_hypos:
                target = hypo["tokens"]
                prev = torch.cat([target.new_tensor([dictionary.eos()]), target[:-1]])[None]
                logits = model(src[row : row + 1], src_lengths[row : row + 1], prev)[0]
                lprobs = torch.log_softmax(logits.float(), dim=-1)[0]
                scores = lprobs.gather(1, target[:, None]).squeeze(1)
                assert torch.allclose(scores, hypo["positional_scores"], atol=ATOL)


def test_skip_and_masked_generate_the_same():
    dictionary = tiny_dictionary()
    model = build_hashee(dictionary, layers=3)
    gen = torch.Generator().manual_seed(5)
    random_tables(model, gen)
    src, src_lengths, _ = random_batch(dictionary, gen, bsz=4, src_len=8)
    sample = {"net_input": {"src_tokens": src, "src_lengths": src_lengths}}
    results = []
    for impl in ("masked", "skip"):
        set_exit_impl(model, impl)
        generator = SequenceGenerator([model], dictionary, beam_size=3, max_len_b=10)
        with torch.no_grad():
            results.append([[h["tokens"].tolist() for h in row] for row in generator.generate([model], sample)])
    assert results[0] == results[1]
