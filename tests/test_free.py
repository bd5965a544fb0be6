"""FREE (exits/free.py, criterions/free_shallow_deep.py, docs/design.md section 8).

Synchronized parallel decoding against its definition: a stacked position is
not frozen, so the incremental decoder, under beams, reordering and batches,
must equal the full model's teacher-forced forward with each position's logits
taken from the exit it decided (the shallow head's or the top's). The loss, the
dynamic layer alignment and the Beta mixture estimator against hand-computed
values; FLOPs against torch's count; host reads per step.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fairseq.sequence_generator import SequenceGenerator
from test_flops import _measured
from test_host_reads import counting_reads

from fairseq_hashee.criterions.free_shallow_deep import (
    FreeShallowDeepCriterion,
    dynamic_alignment,
    layerwise_distillation,
    teacher_layers,
)
from fairseq_hashee.errors import HashEEError
from fairseq_hashee.exits.beta_mixture import BetaMixture, weighted_beta_moments
from fairseq_hashee.exits.rules import rule_scores
from fairseq_hashee.modules import flops, kv_cache

from helpers import TinyTask, build_hashee, random_batch, set_exit_impl, tiny_dictionary, training_sample

LAYERS, SHALLOW = 4, 2


def _free_model(seed=0, shallow=SHALLOW):
    model = build_hashee(
        tiny_dictionary(), seed=seed, layers=LAYERS, decoder_exit_rule="free", shallow_exit_layer=shallow
    )
    gen = torch.Generator().manual_seed(seed)
    src, src_lengths, prev = random_batch(model.decoder.dictionary, gen, bsz=3)
    # A random model's margins are small: their median stacks about half the positions.
    model.decoder.exit_rule.set_threshold(float(rule_scores(model, src, src_lengths, prev).median()))
    return model


def _reference(model, tokens, encoder_out, decided):
    """The definition: the full model's forward, each position's logits from its decided exit."""
    decoder, rule = model.decoder, model.decoder.exit_rule
    decoder.exit_rule = None
    try:
        full, extra = decoder(tokens, encoder_out=encoder_out)
    finally:
        decoder.exit_rule = rule
    shallow = decoder.exit_heads.logits(
        decoder, rule.shallow_layer, extra["inner_states"][rule.shallow_layer].transpose(0, 1)
    )
    return torch.where((decided == rule.shallow_layer)[..., None], shallow, full)


def _targets(dictionary, seed, bsz, src_len, steps):
    """Sources and random targets that start with the end of sentence, as decoding does."""
    gen = torch.Generator().manual_seed(seed)
    src, src_lengths, _ = random_batch(dictionary, gen, bsz=bsz, src_len=src_len)
    tokens = torch.randint(dictionary.nspecial, len(dictionary), (bsz, steps), generator=gen)
    tokens[:, 0] = dictionary.eos()
    return src, src_lengths, tokens


def _rows(model, encoder_out, rows):
    """``encoder_out`` with these rows: fairseq's reorder, which BART's set_beam_size turns off."""
    return type(model.encoder).reorder_encoder_out(model.encoder, encoder_out, rows)


def _decode(model, gen, beamable=True, bsz=3, beam=2, steps=9, reorder_at=(3, 6), finished_at=None):
    """Random targets decoded step by step (reordered within each sentence's beam at ``reorder_at``;
    at ``finished_at`` the second sentence leaves, as fairseq drops a finished sentence's rows):
    the outputs, the exits the steps decided, the teacher-forced forward with the rule and the
    reference, for the rows left."""
    dictionary = model.decoder.dictionary
    src, src_lengths, _ = random_batch(dictionary, gen, bsz=bsz, src_len=10)
    sentence = torch.arange(bsz).repeat_interleave(beam)  # of each live row
    if beamable:
        model.set_beam_size(beam)
    tokens = torch.randint(dictionary.nspecial, len(dictionary), (bsz * beam, steps), generator=gen)
    tokens[:, 0] = dictionary.eos()
    decided = torch.zeros(bsz * beam, steps, dtype=torch.long)
    with torch.no_grad():
        encoder_out = model.encoder(src, src_lengths)
        if not beamable:
            encoder_out = _rows(model, encoder_out, sentence)
        state, outputs = {}, []
        for step in range(steps):
            order = None
            if step in reorder_at:
                picks = torch.randint(0, beam, (len(sentence) // beam, beam), generator=gen)
                order = (torch.arange(len(sentence) // beam)[:, None] * beam + picks).view(-1)
            if step == finished_at:
                order = (sentence != 1).nonzero().view(-1)
            if order is not None:
                model.decoder.reorder_incremental_state_scripting(state, order)
                if not beamable:
                    encoder_out = _rows(model, encoder_out, order)
                tokens, decided, sentence = tokens[order], decided[order], sentence[order]
                outputs = [out[order] for out in outputs]
            out, extra = model.decoder(tokens[:, : step + 1], encoder_out=encoder_out, incremental_state=state)
            decided[:, step] = extra["exits"][:, 0]
            outputs.append(out[:, 0])
        model.set_beam_size(1)
        full_encoder_out = _rows(model, model.encoder(src, src_lengths), sentence)
        forced, forced_extra = model.decoder(tokens, encoder_out=full_encoder_out)
        reference = _reference(model, tokens, full_encoder_out, decided)
    return torch.stack(outputs, dim=1), decided, forced, forced_extra["exits"], reference


@pytest.mark.parametrize("impl", ["skip", "masked"])
@pytest.mark.parametrize("beamable", [True, False])
@pytest.mark.parametrize("seed, finished_at", [(0, None), (1, None), (2, 5)])
def test_incremental_equals_the_full_forward_with_each_positions_exit(impl, beamable, seed, finished_at):
    model = _free_model(seed)
    set_exit_impl(model, impl)
    gen = torch.Generator().manual_seed(10 + seed)
    incremental, decided, forced, forced_exits, reference = _decode(model, gen, finished_at=finished_at)
    stacked = decided == SHALLOW
    assert stacked.any() and (~stacked).any()
    # Some hypothesis stacks two positions or more before going deep: a block of several positions.
    runs = [len(run) for row in stacked.tolist() for run in "".join("s" if s else "d" for s in row).split("d")]
    assert max(runs) >= 2
    assert (incremental - reference).abs().max() < 1e-5
    # The teacher-forced forward with the rule decides the same and computes the same.
    assert torch.equal(forced_exits, decided)
    assert (forced - reference).abs().max() < 1e-5


def test_a_stacked_positions_deep_keys_come_from_its_own_states():
    """Guards the test above, in the cache itself: the top layer's key and value of a position
    that was stacked and later taken deep are projected from that position's own state after the
    layer below (the full model's), not from its frozen shallow state (FREE's copy mode)."""
    model = _free_model(0)
    decoder = model.decoder
    with torch.no_grad():  # a layer between the shallow exit and the top that moves the states
        decoder.layers[SHALLOW].fc2.weight.mul_(50.0)
    src, src_lengths, tokens = _targets(decoder.dictionary, seed=10, bsz=3, src_len=10, steps=9)
    with torch.no_grad():
        encoder_out = model.encoder(src, src_lengths)
        state, decided = {}, []
        for step in range(tokens.size(1)):
            decided.append(decoder(tokens[:, : step + 1], encoder_out=encoder_out, incremental_state=state)[1]["exits"])
        decoder.exit_rule, rule = None, decoder.exit_rule
        inner = decoder(tokens, encoder_out=encoder_out)[1]["inner_states"]
        decoder.exit_rule = rule
    decided = torch.cat(decided, dim=1)
    rows, positions = ((decided[:, :-1] == SHALLOW) & (decided[:, 1:] == LAYERS)).nonzero().unbind(1)
    assert rows.numel() > 0, "a position stacked and taken deep by the next one"
    cache = decoder.get_incremental_state(state, "self_attention_cache")
    top = decoder.layers[-1]
    stored = cache._store(top.self_attn).kv  # (positions, physical rows, 2C): the cache's own storage

    def projected(states, position, row):
        return kv_cache.project_kv_fused(
            top.self_attn, top._attention_input(states[position, row], top.self_attn_layer_norm)
        )

    for row, position in zip(rows.tolist(), positions.tolist()):
        key_value = stored[position, int(cache.ancestry[row, position])]
        assert torch.allclose(key_value, projected(inner[LAYERS - 1], position, row), atol=1e-5)
        assert not torch.allclose(key_value, projected(inner[SHALLOW], position, row), atol=1e-2)


def test_counted_flops_are_executed_but_the_blocks_causal_slack():
    """Batch 1: what the meter counts, plus the scores a synchronized block's causal mask throws away
    (sdpa computes every query against every key), is what torch counts."""
    model = _free_model(3)
    decoder = model.decoder
    src, src_lengths, prev = _targets(decoder.dictionary, seed=3, bsz=1, src_len=12, steps=10)
    slack, widths = 0, []
    with torch.no_grad(), flops.measuring(model) as meter:
        encoder_out = model.encoder(src, src_lengths)
        state, executed = {}, 0
        for step in range(prev.size(1)):
            executed += _measured(
                lambda: decoder(prev[:, : step + 1], encoder_out=encoder_out, incremental_state=state)
            )
            block = decoder.get_incremental_state(state, "self_attention_cache").block
            if block is not None:
                width = block.positions.numel()
                widths.append(width)
                slack += (LAYERS - SHALLOW) * 4 * decoder.shape.embed_dim * width * (width - 1) // 2
        counted = meter.spent("decoder")
    assert max(widths) >= 2, "pick a seed with a block of several positions"
    assert executed == counted + slack


def test_teacher_forced_flops_count_the_layers_a_generation_runs():
    exits = torch.tensor([[4, 2, 2, 4, 2, 2], [2, 2, 4, 4, 4, 0]])
    # Row 0: the positions before its last deep one run every layer, the two after it only 2.
    assert flops.synchronized_layers(exits, 4).tolist() == [[4, 4, 4, 4, 2, 2], [4, 4, 4, 4, 4, 0]]


def test_one_more_host_read_when_a_step_goes_deep(monkeypatch):
    """The planner's read and the rule's replan; a step where a row goes deep reads how many
    positions the block takes along too."""
    model = _free_model(0)
    dictionary, decoder = model.decoder.dictionary, model.decoder
    # Exits 4 2 4 2 2 2 4 4: blocks of 2 and 4 positions.
    src, src_lengths, prev = _targets(dictionary, seed=10, bsz=1, src_len=8, steps=8)
    with torch.no_grad():
        encoder_out = model.encoder(src, src_lengths)
        state, reads = {}, []
        for step in range(prev.size(1)):
            with counting_reads(monkeypatch) as counted:
                decoder(prev[:, : step + 1], encoder_out=encoder_out, incremental_state=state)
            block = decoder.get_incremental_state(state, "self_attention_cache").block
            reads.append((counted["reads"], block is not None))
    assert all(count == (3 if deep else 2) for count, deep in reads), reads
    assert any(deep for _, deep in reads) and not all(deep for _, deep in reads)


# --- training ------------------------------------------------------------------------------------


def test_teacher_layers_are_the_released_table_where_it_is_regular():
    assert teacher_layers(12, 3) == [4, 8, 12]  # released (0-based): [3, 7, 11]
    assert teacher_layers(24, 6) == [4, 8, 12, 16, 20, 24]
    assert teacher_layers(24, 4) == [6, 12, 18, 24]
    assert teacher_layers(24, 8) == [3, 6, 9, 12, 15, 18, 21, 24]
    assert teacher_layers(4, 2) == [2, 4]


def test_dynamic_alignment_by_hand():
    errors = torch.tensor([[0.1, 0.5, 0.4], [0.3, 0.2, 0.05], [0.9, 0.8, 0.1]])
    # Teacher 3 takes student 3 (0.1); teacher 2 the best below 3: student 2 (0.2, not 3's 0.05);
    # teacher 1 the best below 2: student 1.
    assert dynamic_alignment(errors) == [0, 1, 2]
    # The last teacher takes student 1: nothing is left below it, the others take student 1 too.
    assert dynamic_alignment(torch.tensor([[0.5, 0.1], [0.1, 0.9]])) == [0, 0]


def test_layerwise_distillation_by_hand():
    students = [torch.tensor([[0.0], [2.0]], requires_grad=True), torch.tensor([[1.0], [1.0]], requires_grad=True)]
    teachers = [torch.tensor([[1.0], [1.0]]), torch.tensor([[0.0], [3.0]])]
    # Errors: teacher 1 vs students (1.0, 0.0); teacher 2 vs students (0.5, 2.5).
    # Teacher 2 takes student 1 (0.5), so teacher 1 must take student 1 too (1.0): mean 0.75.
    loss = layerwise_distillation(teachers, students)
    assert math.isclose(float(loss.detach()), 0.75)
    loss.backward()
    assert students[1].grad is None or float(students[1].grad.abs().sum()) == 0.0
    assert teachers[0].grad is None  # teachers are detached


def test_the_loss_by_hand():
    dictionary = tiny_dictionary()
    model = build_hashee(dictionary, layers=LAYERS, decoder_exit_rule="free", shallow_exit_layer=SHALLOW).train()
    sample = training_sample(dictionary, seed=1)
    criterion = FreeShallowDeepCriterion(TinyTask(dictionary), False, 0.0, distill_layer_alpha=0.5)
    loss, sample_size, logs = criterion(model, sample)
    assert sample_size == sample["ntokens"]
    with torch.no_grad():
        torch.manual_seed(0)
        _, extra = model(**sample["net_input"])
    decoder, target = model.decoder, sample["target"]
    live = target.ne(dictionary.pad())
    states = [h.transpose(0, 1) for h in extra["inner_states"]]  # dropout 0: the same states

    def cross_entropy(layer):
        logits = (
            decoder.exit_heads.logits(decoder, layer, states[layer])
            if layer < LAYERS
            else decoder.output_layer(states[layer])
        )
        return F.cross_entropy(logits[live], target[live], reduction="sum")

    def mse(a, b):
        return float(((states[a][live] - states[b][live]) ** 2).mean())

    expected = (2 * cross_entropy(2) + 4 * cross_entropy(4)) / 6
    # Teachers 2 and 4, students 1 and 2: teacher 4 takes the closer student; teacher 2 one below it.
    errors = torch.tensor([[mse(2, 1), mse(2, 2)], [mse(4, 1), mse(4, 2)]])
    chosen = dynamic_alignment(errors)
    distill = (errors[0, chosen[0]] + errors[1, chosen[1]]) / 2
    assert math.isclose(float(loss), float(expected) + 0.5 * float(distill) * sample["ntokens"], rel_tol=1e-5)
    assert math.isclose(float(logs["loss_distill"]), float(distill) * sample["ntokens"], rel_tol=1e-5)


def test_refusals():
    with pytest.raises(HashEEError, match=r"--shallow-exit-layer: expected a layer in 1\.\.3"):
        build_hashee(tiny_dictionary(), layers=4, decoder_exit_rule="free", shallow_exit_layer=4)
    model = build_hashee(tiny_dictionary(), layers=4, decoder_exit_rule="confidence").train()
    criterion = FreeShallowDeepCriterion(TinyTask(model.decoder.dictionary), False, 0.0)
    with pytest.raises(HashEEError, match="--decoder-exit-rule free"):
        criterion(model, training_sample(model.decoder.dictionary))
    with pytest.raises(HashEEError, match="--distill-layer-alpha"):
        FreeShallowDeepCriterion(TinyTask(model.decoder.dictionary), False, 0.0, distill_layer_alpha=-1)


# --- the adaptive threshold --------------------------------------------------------------------------


def test_beta_moments_by_hand():
    # Mean 0.5, variance 0.05: alpha = beta = 0.5 (0.25 / 0.05 - 1) = 2.
    alpha, beta = weighted_beta_moments(np.array([0.5 - math.sqrt(0.05), 0.5 + math.sqrt(0.05)]), np.ones(2))
    assert math.isclose(alpha, 2.0) and math.isclose(beta, 2.0)
    assert weighted_beta_moments(np.array([0.3, 0.3]), np.ones(2)) is None  # no variance: no Beta


def test_threshold_of_a_known_mixture():
    mixture = BetaMixture()
    mixture.alphas, mixture.betas = np.array([2.0, 8.0]), np.array([8.0, 2.0])
    # p_agree / (p_agree + p_other) = r / (1 + r), r = (x / (1 - x))^6, exceeds 0.4 from x = 0.4831:
    # 7 of the grid's 10 points (0.5 .. 0.9), so the threshold is the 4th, 0.5.
    assert math.isclose(mixture.threshold(), 0.5)


def test_the_fit_separates_agreeing_confidences():
    mixture = BetaMixture()
    rng = np.random.default_rng(0)
    agree = np.concatenate([np.ones(500, bool), np.zeros(500, bool)])
    confidences = np.concatenate([rng.beta(8, 2, 500), rng.beta(2, 8, 500)])
    mixture.fit(confidences, agree)
    assert mixture.alphas[1] > 6 and mixture.betas[0] > 6  # about (8, 2) and (2, 8)
    assert 0.4 <= mixture.threshold() <= 0.6


def test_decoding_feeds_the_estimator_and_the_next_generation_uses_it():
    model = _free_model(0)
    rule = model.decoder.exit_rule
    rule.use_adaptive_threshold(True)
    fixed = rule.threshold
    _decode(model, torch.Generator().manual_seed(10))
    confidences, agree = rule.calibration_data()
    assert len(confidences) > 0 and len(confidences) == len(agree)
    _decode(model, torch.Generator().manual_seed(11))  # its first step refits
    assert rule.adapted_threshold is not None and rule.estimator.fits >= 1
    assert rule.current_threshold() == rule.adapted_threshold != fixed


def test_fairseqs_beam_search_gives_the_dense_definitions_hypotheses():
    """fairseq's generator (beam 4, hypotheses ending at different steps, so beam search reorders
    rows onto each other): the skip path's synchronized decoding and the masked reference, which
    runs every position through every layer with fairseq's own cache, find the same hypotheses."""
    model = _free_model(2)
    dictionary = model.decoder.dictionary
    with torch.no_grad():  # the end of sentence more likely than a random model makes it
        model.decoder.output_projection.weight[dictionary.eos()].mul_(6.0)
    src, src_lengths, _ = random_batch(dictionary, torch.Generator().manual_seed(2), bsz=3)
    sample = {"net_input": {"src_tokens": src, "src_lengths": src_lengths}}
    outputs = []
    for impl in ("skip", "masked"):
        set_exit_impl(model, impl)
        generator = SequenceGenerator([model], dictionary, beam_size=4, max_len_b=12)
        with torch.no_grad():
            outputs.append(generator.generate([model], sample))
    assert len({len(h["tokens"]) for hypos in outputs[0] for h in hypos}) > 1
    for skip, masked in zip(*outputs):
        assert [h["tokens"].tolist() for h in skip] == [h["tokens"].tolist() for h in masked]
        for a, b in zip(skip, masked):
            assert torch.allclose(a["positional_scores"], b["positional_scores"], atol=1e-5)
