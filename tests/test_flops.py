"""The FLOPs we report are the FLOPs the skipping path executes.

torch's own FlopCounterMode counts the matrix products the skip path really
runs; on single unpadded sentences (no packing slack) and incremental decoding
(no causal-mask slack) that count must equal our closed form exactly.
"""

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from fairseq_hashee.modules import flops

from helpers import build_hashee, random_batch, random_tables, tiny_dictionary


def _cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs):
    return sdpa_flop_count(query, key, value)


def _onednn_linear(x_shape, weight_shape, *args, out_shape=None, **kwargs):
    return 2 * math.prod(x_shape[:-1]) * weight_shape[0] * weight_shape[1]


# torch counts the fused CPU attention kernel, and the oneDNN products of
# gathered tokens (modules/few_rows_linear.py), only when told how.
_MAPPING = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa}
if torch.backends.mkldnn.is_available():
    _MAPPING[torch.ops.mkldnn._linear_pointwise] = _onednn_linear


def _measured(fn):
    with FlopCounterMode(display=False, custom_mapping=_MAPPING) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("seed", [0, 2, 3])
def test_counted_flops_are_executed_flops(seed):
    dictionary = tiny_dictionary()
    model = build_hashee(dictionary, seed=seed, layers=4)
    gen = torch.Generator().manual_seed(seed)
    random_tables(model, gen)
    src, src_lengths, prev = random_batch(dictionary, gen, bsz=1, src_len=12, tgt_len=7)
    assert (model.decoder.exit_table[prev] < 4).any(), "pick a seed whose tokens exit early"
    # Keys/values a step did not need wait until a query needs them; a last
    # token running every layer (a special symbol) makes every layer read them all.
    prev[0, -1] = dictionary.eos()
    with torch.no_grad(), flops.measuring(model) as meter:
        executed = _measured(lambda: model.encoder(src, src_lengths))
        assert executed == meter.spent("encoder")
        encoder_out = model.encoder(src, src_lengths)
        state, executed = {}, 0
        before = meter.spent("decoder")
        for step in range(prev.size(1)):
            executed += _measured(
                lambda: model.decoder(prev[:, : step + 1], encoder_out=encoder_out, incremental_state=state)
            )
        assert executed == meter.spent("decoder") - before
    report = flops.speedup_report(meter.sums)
    assert report["enc_speedup"] > 1.0 and report["dec_speedup"] > 1.0


def test_no_exits_means_no_speedup():
    dictionary = tiny_dictionary()
    model = build_hashee(dictionary)
    src, src_lengths, prev = random_batch(dictionary, torch.Generator().manual_seed(0))
    with torch.no_grad(), flops.measuring(model) as meter:
        model(src, src_lengths, prev)
    report = flops.speedup_report(meter.sums)
    assert report["enc_speedup"] == report["dec_speedup"] == report["total_speedup"] == 1.0
    assert report["enc_mean_exit"] == report["dec_mean_exit"] == model.encoder.num_layers


def test_the_report_line_reads_back():
    """Tools that read generation logs (hashee-compare) parse what the task logs."""
    report = dict(enc_speedup=2.274, dec_speedup=1.0, total_speedup=1.178, enc_mean_exit=1.5, dec_mean_exit=4.0)
    for calls in ({}, {"dec_calls": 137.0}):  # the decoder's calls where the reporter counted them
        line = "2026-11-30 | INFO | HashEE generation " + flops.format_report({**report, **calls}) + "\n"
        expected = dict(report, enc_speedup=2.27, total_speedup=1.18, **calls)
        assert flops.parse_report("noise\n" + line) == expected
    assert flops.parse_report("no report here") is None


def test_the_meter_counts_each_stacks_calls():
    """A generation's decoder calls are beam search's steps: one per incremental step, whatever exits."""
    dictionary = tiny_dictionary()
    model = build_hashee(dictionary, layers=3, encoder_hash_type="random", decoder_hash_type="random").eval()
    src = torch.randint(4, len(dictionary), (2, 6))
    with torch.no_grad(), flops.measuring(model) as meter:
        encoder_out = model.encoder(src, torch.tensor([6, 6]))
        state, prev = {}, torch.full((2, 1), dictionary.eos())
        for _ in range(5):
            logits, _ = model.decoder(prev, encoder_out=encoder_out, incremental_state=state)
            prev = torch.cat([prev, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert meter.sums["encoder_calls"] == 1 and meter.sums["decoder_calls"] == 5
    assert flops.speedup_report(meter.sums)["dec_calls"] == 5


def test_hand_computed_encoder_flops():
    shape = flops.StackShape(layers=2, embed_dim=4, ffn_dim=8)
    exits = torch.tensor([[0, 1, 2]])  # one pad, two tokens exiting at 1 and 2
    kv = 4 * 16 * 2 * 2  # K and V of 2 tokens in 2 layers
    per_token_layer = 4 * 16 + 4 * 4 * 8 + 4 * 4 * 2  # q+o, FFN, attention over 2 keys
    assert flops.encoder_flops(shape, exits) == kv + 3 * per_token_layer
