"""Dynamic exit rules (CALM's confidence measures, DAT's halting, ConsistentEE's policies, the agreement rule
standing in for LECO's COBEE, with LECO's searched heads too): the four tests of docs/design.md section 7.

(1) incremental decoding equals the teacher-forced forward that replays the
exit decisions the incremental run took, with batches, beams and reordering;
(2) a rule that never fires gives exactly the model without a rule;
(3) the skip path equals the masked path under the same decisions;
(4) counted FLOPs, the rule's own included, equal what torch counts.
"""

import contextlib

import pytest
import torch
from test_flops import _measured

from fairseq_hashee.errors import HashEEError
from fairseq_hashee.exits.heads import HEAD_ARCHS
from fairseq_hashee.exits.rules import rule_scores
from fairseq_hashee.modules import flops

from helpers import PRECISIONS, build_hashee, random_batch, set_exit_impl, tiny_dictionary

# "+searched": with LECO's searched heads (a different architecture per layer).
RULES = [
    *("softmax", "saturation", "classifier"),  # CALM's measures
    *("dat-halting", "dat-multinomial", "consistentee", "agreement", "agreement+searched"),
]
LAYERS = 4
SEARCHED_CHOICE = ["linear", "mlp", "pooler"]  # layers 1..3


def _model(rule, seed=0, exit_heads="shared"):
    rule, searched = rule.partition("+")[0], rule.endswith("+searched")
    if rule.startswith("dat-") or rule in ("consistentee", "agreement"):
        options = dict(decoder_exit_rule=rule)
    else:
        options = dict(decoder_exit_rule="confidence", exit_confidence=rule)
    heads = "searched" if searched else exit_heads
    model = build_hashee(tiny_dictionary(), seed=seed, layers=LAYERS, exit_heads=heads, **options)
    if searched:  # heads unlike the output projection (the pooler's tanh is already), so a wrong head shows
        model.decoder.exit_heads.select([HEAD_ARCHS.index(arch) for arch in SEARCHED_CHOICE])
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in model.decoder.exit_heads.named_parameters():
                if "pooler" not in name:  # the random model's logits are flat: small changes, some agreement left
                    param.add_(torch.randn(param.shape, generator=gen) * (1e-3 if "linear" in name else 1e-2))
    if rule == "dat-multinomial":  # larger random weights spread the chosen layers over 1..L
        with torch.no_grad():
            model.decoder.exit_rule.exit_layer_classifier.weight.mul_(20.0)
    return model


def _never_fires(model):
    rule = model.decoder.exit_rule
    if rule.threshold_range is None:  # DAT's multinomial: a classifier that always picks the top layer
        with torch.no_grad():
            rule.exit_layer_classifier.weight.zero_()
            rule.exit_layer_classifier.bias.copy_(torch.arange(LAYERS, dtype=torch.float32))
    else:
        rule.set_threshold(rule.threshold_range[1])  # top of the measure's range


def _fire_about_half(model, gen, bsz=3):
    """A threshold at which a confidence rule exits some positions early and keeps others
    (DAT's random classifiers already do at their defaults)."""
    src, src_lengths, prev = random_batch(model.decoder.dictionary, gen, bsz=bsz)
    rule = model.decoder.exit_rule
    if rule.threshold_range is not None:
        rule.set_threshold(float(rule_scores(model, src, src_lengths, prev).median()))
    if hasattr(rule, "set_patience"):  # the agreement rule: the first setting that exits some positions, not all
        live = prev.ne(model.decoder.dictionary.pad())
        for patience, threshold in ((1, 0.0), (1, rule.threshold), (0, rule.threshold)):
            rule.set_patience(patience)
            rule.set_threshold(threshold)
            with torch.no_grad():
                exits = model(src, src_lengths, prev)[1]["exits"][live]
            if 0.2 < float((exits < model.decoder.num_layers).float().mean()) < 0.8:
                break


@contextlib.contextmanager
def _without_rule(decoder):
    rule, decoder.exit_rule = decoder.exit_rule, None
    try:
        yield
    finally:
        decoder.exit_rule = rule


@contextlib.contextmanager
def _replaying(decoder, exits):
    """Teacher-forced forward with the exits a rule decided, as a table would give them."""
    lookup, table_has_exits = decoder.token_exits, not decoder.no_early_exits
    decoder.token_exits = lambda tokens: exits[:, : tokens.size(1)]
    decoder.no_early_exits = False  # else the stack would not plan: its table sends everything to L
    try:
        with _without_rule(decoder):
            yield
    finally:
        decoder.token_exits, decoder.no_early_exits = lookup, not table_has_exits


def incremental_against_replay(model, gen, device="cpu"):
    """Decode random targets incrementally (3 sentences, 2 beams, reordered at steps 3 and 6)
    and teacher-forced replaying the exits the steps took; returns the largest output
    difference and the exits (B * beam, steps)."""
    dictionary = model.decoder.dictionary
    bsz, beam, steps = 3, 2, 9
    src, src_lengths, _ = random_batch(dictionary, gen, bsz=bsz, src_len=10, device=device)
    expand = torch.arange(bsz, device=device).repeat_interleave(beam)
    model.set_beam_size(beam)
    tokens = torch.randint(dictionary.nspecial, len(dictionary), (bsz * beam, steps), generator=gen).to(device)
    tokens[:, 0] = dictionary.eos()
    decided = torch.zeros(bsz * beam, steps, dtype=torch.long, device=device)
    with torch.no_grad():
        encoder_out = model.encoder(src, src_lengths)
        full_encoder_out = model.encoder.reorder_encoder_out(encoder_out, expand)
        state, outputs = {}, []
        for step in range(steps):
            if step in (3, 6):
                picks = torch.randint(0, beam, (bsz, beam), generator=gen)
                order = (torch.arange(bsz)[:, None] * beam + picks).view(-1).to(device)
                model.decoder.reorder_incremental_state_scripting(state, order)
                tokens[:, :step], decided[:, :step] = tokens[order, :step], decided[order, :step]
                outputs = [out[order] for out in outputs]
            out, extra = model.decoder(tokens[:, : step + 1], encoder_out=encoder_out, incremental_state=state)
            decided[:, step] = extra["exits"][:, 0]
            outputs.append(out[:, 0])
        model.set_beam_size(1)
        with _replaying(model.decoder, decided):
            forced = model.decoder(tokens, encoder_out=full_encoder_out)[0]
    return (torch.stack(outputs, dim=1) - forced).float().abs().max(), decided


# fp32: both paths, two seeds; half precision: the skip path, one seed (the masked reference is fp32's).
REPLAY_CASES = [
    pytest.param(impl, seed, *precision.values, id=f"{impl}-{seed}-{precision.id}")
    for precision in PRECISIONS
    for impl in (["skip", "masked"] if precision.values[1] == torch.float32 else ["skip"])
    for seed in ([0, 1] if precision.values[1] == torch.float32 else [0])
]


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("impl, seed, device, dtype, atol", REPLAY_CASES)
def test_incremental_equals_teacher_forced_replay(rule, impl, seed, device, dtype, atol):
    model = _model(rule, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    _fire_about_half(model, gen)
    set_exit_impl(model, impl)
    model.to(device=device, dtype=dtype)
    difference, decided = incremental_against_replay(model, gen, device)
    assert 1 <= int((decided < LAYERS).sum()) < decided.numel(), "the rule should exit some positions, not all"
    # bf16 keeps 8 bits of mantissa; the tiny models' logits are below 1 (as in test_incremental)
    assert difference < atol


@pytest.mark.parametrize("rule", RULES)
def test_a_rule_that_never_fires_is_the_model_without_one(rule):
    model = _model(rule)
    _never_fires(model)
    src, src_lengths, prev = random_batch(model.decoder.dictionary, torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours, extra = model(src, src_lengths, prev)
        with _without_rule(model.decoder):
            plain, _ = model(src, src_lengths, prev)
    assert torch.equal(ours, plain)
    live = prev.ne(model.decoder.dictionary.pad())
    assert bool((extra["exits"][live] == LAYERS).all())


@pytest.mark.parametrize(
    "rule, heads",
    [(rule, heads) for rule in RULES for heads in ("shared", "per-layer") if "+" not in rule or heads == "shared"],
)
def test_skip_equals_masked_under_the_same_decisions(rule, heads):
    model = _model(rule, seed=2, exit_heads=heads)
    gen = torch.Generator().manual_seed(2)
    if heads == "per-layer":  # heads unlike the output projection, so a wrong head shows
        with torch.no_grad():
            for head in model.decoder.exit_heads.layers:
                head.weight.add_(torch.randn(head.weight.shape, generator=gen) * 0.5)
    _fire_about_half(model, gen)
    src, src_lengths, prev = random_batch(model.decoder.dictionary, gen)
    with torch.no_grad():
        skipped, extra = model(src, src_lengths, prev)
        decided = extra["exits"]
        assert bool((decided[prev.ne(model.decoder.dictionary.pad())] < LAYERS).any())
        set_exit_impl(model, "masked")
        with _replaying(model.decoder, decided):
            masked = model(src, src_lengths, prev)[0]
    live = prev.ne(model.decoder.dictionary.pad())  # padding states differ by design (stock layers update them)
    assert (skipped - masked)[live].abs().max() < 1e-5
    if heads == "per-layer" or "+searched" in rule:
        # a position's distribution is its exit layer's head applied to its (frozen) state
        b, t = ((decided > 0) & (decided < LAYERS)).nonzero()[0].tolist()
        layer = int(decided[b, t])
        state = extra["inner_states"][layer][t, b]
        expected = model.decoder.exit_heads.logits(model.decoder, layer, state)
        assert torch.allclose(skipped[b, t], expected, atol=1e-5)


@pytest.mark.parametrize("rule", RULES + ["softmax+searched"])  # CALM's softmax pays for a searched head too
def test_counted_flops_include_the_rule_and_are_executed(rule):
    model = _model(rule, seed=3)
    gen = torch.Generator().manual_seed(3)
    _fire_about_half(model, gen, bsz=1)
    src, src_lengths, prev = random_batch(model.decoder.dictionary, gen, bsz=1, src_len=12, tgt_len=8)
    with torch.no_grad(), flops.measuring(model) as meter:
        encoder_out = model.encoder(src, src_lengths)
        state, executed, decided = {}, 0, []
        for step in range(prev.size(1)):
            last = step == prev.size(1) - 1
            # The last step runs every layer (no rule), so every deferred key/value is read.
            with _without_rule(model.decoder) if last else contextlib.nullcontext():
                executed += _measured(
                    lambda: decided.append(
                        model.decoder(prev[:, : step + 1], encoder_out=encoder_out, incremental_state=state)[1]["exits"]
                    )
                )
        assert executed == meter.spent("decoder")
    assert any(int(e) < LAYERS for e in decided[:-1]), "the rule should exit some positions"


def test_a_layer_first_reached_after_a_sentence_finished_reads_its_own_source():
    """As fairseq's beam search runs BART: beamable attention, so ``encoder_out`` keeps the
    first step's sentences while finished ones leave the state. The rule exits everything
    at layer 1 until a sentence has left, then nothing: the upper layers get their first
    queries only then, and must still attend to each hypothesis's own source."""
    model = _model("softmax").eval()
    rule, dictionary = model.decoder.exit_rule, model.decoder.dictionary
    gen = torch.Generator().manual_seed(3)
    bsz, beam, steps, finished_at = 3, 2, 7, 3
    src, src_lengths, _ = random_batch(dictionary, gen, bsz=bsz, src_len=10)
    model.set_beam_size(beam)
    tokens = torch.randint(dictionary.nspecial, len(dictionary), (bsz * beam, steps), generator=gen)
    tokens[:, 0] = dictionary.eos()
    sentence = torch.arange(bsz).repeat_interleave(beam)  # of each live hypothesis
    decided = torch.zeros(bsz * beam, steps, dtype=torch.long)
    with torch.no_grad():
        encoder_out = model.encoder(src, src_lengths)  # never reordered, as under BARTModel.set_beam_size
        state = {}
        for step in range(steps):
            if step == finished_at:  # sentence 0 finished: its hypotheses leave, the others are reordered
                order = torch.tensor([3, 2, 4, 4])
                model.decoder.reorder_incremental_state_scripting(state, order)
                tokens, decided, sentence = tokens[order], decided[order], sentence[order]
            rule.set_threshold(0.0 if step < finished_at else 1.0)  # always fires, then never
            out, extra = model.decoder(tokens[:, : step + 1], encoder_out=encoder_out, incremental_state=state)
            decided[:, step] = extra["exits"][:, 0]
            model.set_beam_size(1)
            with _replaying(model.decoder, decided):
                own_sources = model.encoder(src[sentence], src_lengths[sentence])
                forced = model.decoder(tokens[:, : step + 1], encoder_out=own_sources)[0]
            model.set_beam_size(beam)
            assert (out[:, 0] - forced[:, step]).abs().max() < 1e-5, step
    assert (decided[:, :finished_at] == 1).all() and (decided[:, finished_at:] == LAYERS).all()


def test_saturation_decides_from_layer_2():
    """Below layer 1 there is only the embedding: CALM's state measure has no confidence at the first
    exit, so a threshold every comparison passes exits at layer 2 (or at --exit-min-layer above it)."""
    model = _model("saturation")
    rule = model.decoder.exit_rule
    rule.set_threshold(-1.0)
    src, src_lengths, prev = random_batch(model.decoder.dictionary, torch.Generator().manual_seed(5))
    live = prev.ne(model.decoder.dictionary.pad())
    for min_layer, expected in ((1, 2), (2, 2), (3, 3)):
        rule.min_layer = min_layer
        with torch.no_grad():
            exits = model(src, src_lengths, prev)[1]["exits"]
        assert bool((exits[live] == expected).all()), min_layer
    rule.min_layer = 1
    scores = rule_scores(model, src, src_lengths, prev)  # calibrated on the layers it decides at: 2..L-1
    assert scores.numel() == int(live.sum()) * (LAYERS - 2)


@pytest.mark.parametrize(
    "rule, layers, min_layer, option",
    [
        ("saturation", 2, 1, "--exit-confidence saturation (it decides from layer 2)"),
        ("softmax", LAYERS, LAYERS, f"--exit-min-layer {LAYERS}"),
    ],
)
def test_rule_scores_refuse_a_decoder_where_the_rule_decides_nowhere(rule, layers, min_layer, option):
    """No layer below the top to score: one error line naming the option, not torch's empty cat."""
    model = build_hashee(tiny_dictionary(), layers=layers, decoder_exit_rule="confidence", exit_confidence=rule)
    model.decoder.exit_rule.min_layer = min_layer
    src, src_lengths, prev = random_batch(model.decoder.dictionary, torch.Generator().manual_seed(0))
    with pytest.raises(HashEEError, match="no layer below the top") as refused:
        rule_scores(model, src, src_lengths, prev)
    assert str(refused.value).startswith(f"{option}: the {rule} confidence rule decides at no layer below the top")
    assert f"this {layers}-layer decoder" in str(refused.value)


def test_decaying_threshold_on_hand_computed_values():
    """CALM's lambda(t) = clip(0.9 lambda + 0.1 exp(-tau t / N)), here lambda 0.5, tau 4, N 10."""
    rule = _model("softmax").decoder.exit_rule
    rule.set_threshold(0.5)
    rule.set_threshold_decay(4.0, 10)
    expected = torch.tensor([0.55, 0.45 + 0.1 * 0.1353352832, 0.45 + 0.1 * 0.0183156389])
    assert torch.allclose(rule.thresholds(torch.tensor([0, 5, 10])), expected, atol=1e-7)
    rule.set_threshold(1.0)  # already at the top of the range at t = 0: the clip keeps it there
    assert float(rule.thresholds(torch.tensor([0]))) == pytest.approx(1.0)


@pytest.mark.parametrize("measure", ["softmax", "classifier"])
def test_decaying_threshold_decides_alike_incrementally_and_teacher_forced(measure):
    """The threshold reads each position's absolute index: incremental steps take the decisions the
    teacher-forced forward takes, and replaying them gives the same outputs."""
    model = _model(measure, seed=1)
    gen = torch.Generator().manual_seed(1)
    src, src_lengths, prev = random_batch(model.decoder.dictionary, gen, bsz=3)
    rule = model.decoder.exit_rule
    # lambda with 0.9 lambda at the scores' 30th percentile: late positions exit about 70% of the
    # time, early ones (lambda(0) = 0.9 lambda + 0.1) less, and a constant lambda less still.
    rule.set_threshold(float(rule_scores(model, src, src_lengths, prev).quantile(0.3)) / 0.9)
    rule.set_threshold_decay(4.0, prev.size(1))
    difference, decided = incremental_against_replay(model, gen)
    assert difference < 1e-5
    assert 1 <= int((decided < LAYERS).sum()) < decided.numel()
    with torch.no_grad():
        forced = model(src, src_lengths, prev)[1]["exits"]
        encoder_out, state = model.encoder(src, src_lengths), {}
        steps = [
            model.decoder(prev[:, : t + 1], encoder_out=encoder_out, incremental_state=state)[1]["exits"][:, 0]
            for t in range(prev.size(1))
        ]
    live = prev.ne(model.decoder.dictionary.pad())
    assert torch.equal(torch.stack(steps, dim=1)[live], forced[live])
    rule.decay = None
    with torch.no_grad():
        constant = model(src, src_lengths, prev)[1]["exits"]
    assert not torch.equal(constant[live], forced[live]), "the decay should change some decision"


@pytest.mark.parametrize(
    "rule, min_layer",
    [("softmax", 1), ("softmax+searched", 1), ("agreement", 1), ("agreement", 3), ("agreement+searched", 2)],
)
def test_an_exit_decided_on_its_logits_pays_for_them_once(rule, min_layer):
    """A position the rule exits at layer e after reading layer e's head outputs those logits: it pays
    for the heads of its decisions at layers 1..e (e heads), none more for its output, and its output
    is what the head of layer e gives (as when the same exit comes from a table)."""
    model = _model(rule, seed=3)
    decoder = model.decoder
    exit_rule = decoder.exit_rule
    exit_rule.set_threshold(0.0)  # fires at the first layer it may exit at
    exit_rule.min_layer = min_layer
    if hasattr(exit_rule, "set_patience"):
        exit_rule.set_patience(0)
    src, src_lengths, prev = random_batch(decoder.dictionary, torch.Generator().manual_seed(3), bsz=1, tgt_len=2)

    def decode(first_exit=None):
        """Two steps, counted and executed: the first with the rule (or the table's ``first_exit``),
        the second running every layer, so every deferred key/value is read."""
        outputs, executed = [], 0
        with torch.no_grad(), flops.measuring(model) as meter:
            encoder_out, state = model.encoder(src, src_lengths), {}
            for step in range(2):
                lookup, no_early_exits = decoder.token_exits, decoder.no_early_exits
                if step == 0 and first_exit is not None:
                    decoder.token_exits, decoder.no_early_exits = (lambda t: torch.full_like(t, first_exit)), False
                rule_off = step == 1 or first_exit is not None
                with _without_rule(decoder) if rule_off else contextlib.nullcontext():
                    executed += _measured(
                        lambda: outputs.append(
                            decoder(prev[:, : step + 1], encoder_out=encoder_out, incremental_state=state)
                        )
                    )
                decoder.token_exits, decoder.no_early_exits = lookup, no_early_exits
            return [out[0][:, 0] for out in outputs], int(outputs[0][1]["exits"]), executed, meter.spent("decoder")

    ruled, exit_layer, executed, counted = decode()
    assert exit_layer == min_layer and executed == counted
    tabled, _, _, table_counted = decode(first_exit=exit_layer)
    assert torch.allclose(ruled[0], tabled[0], atol=1e-6) and torch.allclose(ruled[1], tabled[1], atol=1e-6)
    heads = decoder.exit_heads
    decisions = sum(heads.flops_per_position(layer, decoder.shape.vocab) for layer in range(1, exit_layer))
    assert counted == table_counted + decisions  # the table's exit pays layer e's head, for its output
