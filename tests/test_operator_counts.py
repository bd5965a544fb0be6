"""Operators dispatched per encoder forward and per decoder step, against stock fairseq BART.

On a GPU at summarization sizes a step's time follows the kernels it launches,
not its FLOPs, so the skip path must launch no more than stock BART does
(docs/design.md section 3, docs/benchmark.md "Operators"): at most 1.1x stock
with every layer partly active, fewer than stock where layers are left empty.
Counted on the CPU (fairseq_hashee/benchmark/operators.py): the count of
operators does not depend on the device or the widths.
"""

import pytest
import torch
from fairseq.sequence_generator import SequenceGenerator

from fairseq_hashee.benchmark.operators import count_operators, operators_per_call
from fairseq_hashee.exits.rules import rule_scores

from helpers import build_hashee, build_pair, tiny_dictionary

LAYERS, BATCH, BEAM, SRC_LEN, PREFIX = 6, 8, 4, 40, 5
DICTIONARY = tiny_dictionary(200)


@pytest.fixture(scope="module")
def pair():
    return build_pair(DICTIONARY, layers=LAYERS)


def _tables(model, encoder_buckets, decoder_buckets):
    """Exit tables drawing each ordinary symbol's layer from ``*_buckets`` (None: no exits)."""
    gen = torch.Generator().manual_seed(3)
    for stack, buckets in ((model.encoder, encoder_buckets), (model.decoder, decoder_buckets)):
        table = torch.full((len(DICTIONARY),), LAYERS)
        if buckets is not None:
            table = torch.tensor(buckets)[torch.randint(len(buckets), (len(DICTIONARY),), generator=gen)]
            table[: DICTIONARY.nspecial] = LAYERS
        stack.set_exit_table(table)


def _tokens(rows, length, seed, eos_first=False, eos_last=False):
    tokens = torch.randint(
        DICTIONARY.nspecial, len(DICTIONARY), (rows, length), generator=torch.Generator().manual_seed(seed)
    )
    if eos_first:
        tokens[:, 0] = DICTIONARY.eos()
    if eos_last:
        tokens[:, -1] = DICTIONARY.eos()
    return tokens


def _encoder_operators(model, src):
    forward = lambda: model.encoder(src, torch.full((BATCH,), SRC_LEN))  # noqa: E731
    with torch.no_grad():
        forward()  # the fused key/value weights are made at the first use, once per model
    return count_operators(forward).total


def _step_operators(model, src):
    """Operators of one beam-search step (batch x beam rows, fairseq's beamable cross-attention),
    after a few steps and a reorder, as fairseq-generate runs it."""
    model.set_beam_size(BEAM)
    try:
        with torch.no_grad():
            encoder_out = model.encoder(src, torch.full((BATCH,), SRC_LEN))
            prev = _tokens(BATCH * BEAM, PREFIX + 1, seed=5, eos_first=True)
            state = {}
            for t in range(PREFIX):
                model.decoder(prev[:, : t + 1], encoder_out=encoder_out, incremental_state=state)
                if t == 2:  # hypotheses swap within their sentence
                    order = torch.arange(BATCH * BEAM).view(BATCH, BEAM).flip(1).reshape(-1)
                    model.decoder.reorder_incremental_state_scripting(state, order)
        counted = count_operators(lambda: model.decoder(prev, encoder_out=encoder_out, incremental_state=state))
        return counted.total
    finally:
        model.set_beam_size(1)


def _counts(model, src):
    return _encoder_operators(model, src), _step_operators(model, src)


def test_no_exits_launch_no_more_than_stock(pair):
    stock, hashee = pair
    src = _tokens(BATCH, SRC_LEN, seed=0, eos_last=True)
    _tables(hashee, None, None)
    (enc_stock, step_stock), (enc, step) = _counts(stock, src), _counts(hashee, src)
    assert enc <= enc_stock and step <= step_stock


def test_every_layer_partly_active_launches_at_most_a_tenth_more(pair):
    stock, hashee = pair
    src = _tokens(BATCH, SRC_LEN, seed=0, eos_last=True)
    _tables(hashee, range(1, LAYERS + 1), range(1, LAYERS + 1))
    enc_stock, step_stock = _counts(stock, src)
    enc, step = _counts(hashee, src)
    assert enc <= 1.1 * enc_stock and step <= 1.1 * step_stock, (enc, enc_stock, step, step_stock)


def test_empty_layers_launch_fewer_than_stock(pair):
    stock, hashee = pair
    src = _tokens(BATCH, SRC_LEN, seed=0)  # no special symbol: layers 4-6 are left empty
    _tables(hashee, (1, 2, 3), (1, 2, 3))
    enc_stock, step_stock = _counts(stock, src)
    enc, step = _counts(hashee, src)
    # Half the layers left empty cost nothing: well under stock's count.
    assert enc < 0.8 * enc_stock and step < 0.8 * step_stock, (enc, enc_stock, step, step_stock)


# The most operators a rule may add per layer it decides at: its own (a head, a confidence,
# a comparison), writing its decisions and, where some rows exit, ordering the rows anew.
# Measured: 15-47 (LECO's agreement compares two heads' predictions and keeps the exit's logits).
RULE_BOUND = 50


@pytest.mark.parametrize(
    "options",
    [
        dict(decoder_exit_rule="confidence", exit_confidence="softmax"),
        dict(decoder_exit_rule="confidence", exit_confidence="saturation"),
        dict(decoder_exit_rule="dat-halting"),
        dict(decoder_exit_rule="consistentee"),
        dict(decoder_exit_rule="agreement"),
    ],
    ids=lambda options: options.get("exit_confidence", options["decoder_exit_rule"]),
)
def test_a_rule_adds_a_bounded_count_per_deciding_layer(options):
    model = build_hashee(DICTIONARY, layers=LAYERS, **options)
    src = _tokens(BATCH, SRC_LEN, seed=0, eos_last=True)
    rule = model.decoder.exit_rule
    prev = _tokens(BATCH, PREFIX + 1, seed=5, eos_first=True)
    if rule.threshold_range is not None:  # about half the rows exit below the top
        rule.set_threshold(float(rule_scores(model, src, torch.full((BATCH,), SRC_LEN), prev).median()))
    if hasattr(rule, "set_patience"):
        rule.set_patience(0)
    with_rule = _step_operators(model, src)
    model.decoder.exit_rule = None
    without = _step_operators(model, src)
    assert with_rule - without <= RULE_BOUND * (LAYERS - 1), (with_rule, without)


def test_the_benchmark_counts_per_encoder_forward_and_per_decoder_step(pair):
    """fairseq's generator calls the stacks' ``forward`` past nn.Module's hooks: still counted."""
    stock, _ = pair
    src, lengths = _tokens(2, 12, seed=0, eos_last=True), torch.full((2,), 12)
    sample = {"net_input": {"src_tokens": src, "src_lengths": lengths}}
    generator = SequenceGenerator([stock], DICTIONARY, beam_size=2, max_len_a=0, max_len_b=4, min_len=4)
    run = lambda: generator.generate([stock], sample)  # noqa: E731
    encoder = count_operators(lambda: stock.encoder(src, lengths)).total
    assert operators_per_call(stock, lambda: stock.encoder(src, lengths), "encoder") == encoder
    assert operators_per_call(stock, run, "encoder") == encoder
    per_step = operators_per_call(stock, run, "generate")
    steps = count_operators(run).total - encoder
    assert steps / 6 < per_step < steps / 4  # 5 decoder steps (4 tokens and the end), beam search's work spread
