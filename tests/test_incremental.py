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
        # and values wait (pending) and are projected later in one batch.
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
            deferred += sum(kv_cache.pending_steps(layer.self_attn, state) > 0 for layer in model.decoder.layers)
    if tables == "mostly-layer-1" and impl == "skip":
        assert deferred > 0


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
