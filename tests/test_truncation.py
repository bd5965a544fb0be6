"""Static truncation (BART-6L style): a shallower model restored from a deeper one."""

import pytest
import torch

from fairseq_hashee.errors import HashEEError
from fairseq_hashee.models.truncation import kept_layers
from fairseq_hashee.modules import flops

from helpers import build_hashee, random_batch, tiny_dictionary


def test_kept_layers():
    assert kept_layers("first", 3, 6, "--keep-encoder-layers") == [1, 2, 3]
    assert kept_layers("spread", 3, 6, "--keep-encoder-layers") == [2, 4, 6]
    assert kept_layers("spread", 2, 12, "--keep-encoder-layers") == [6, 12]
    assert kept_layers("5,1,3", 3, 6, "--keep-encoder-layers") == [1, 3, 5]


@pytest.mark.parametrize(
    "spec, keep, message",
    [
        ("1,7,2", 3, r"layer\(s\) \[7\] outside the checkpoint's layers 1..6"),
        ("1,2", 3, "lists 2 distinct layers, the model has 3"),
        ("1,1,2", 3, "lists 2 distinct layers"),
        ("first", 0, "must keep at least one layer"),
        ("top", 3, "expected first, spread or a comma-separated list"),
    ],
)
def test_bad_keep_specs_are_named(spec, keep, message):
    with pytest.raises(HashEEError, match=message) as err:
        kept_layers(spec, keep, 6, "--keep-encoder-layers")
    assert str(err.value).startswith("--keep-encoder-layers: ")


@pytest.mark.parametrize("spec, kept", [("first", [0, 1]), ("spread", [1, 3]), ("1,4", [0, 3])])
def test_truncated_model_runs_the_kept_layers_of_the_deep_one(spec, kept):
    dictionary = tiny_dictionary()
    deep = build_hashee(dictionary, layers=4)
    shallow = build_hashee(dictionary, layers=2, keep_encoder_layers=spec, keep_decoder_layers=spec)
    shallow.load_state_dict(deep.state_dict())
    # the same model built by hand: the deep one with only the kept layers
    for stack in (deep.encoder, deep.decoder):
        stack.layers = torch.nn.ModuleList(stack.layers[i] for i in kept)
        stack.num_layers = len(kept)
    src, src_lengths, prev = random_batch(dictionary, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(shallow(src, src_lengths, prev)[0], deep(src, src_lengths, prev)[0])
    assert int(shallow.encoder.full_depth) == int(shallow.decoder.full_depth) == 4


def test_speedup_report_compares_with_the_full_depth():
    dictionary = tiny_dictionary()
    deep = build_hashee(dictionary, layers=4)
    shallow = build_hashee(dictionary, layers=2)
    shallow.load_state_dict(deep.state_dict())
    src, src_lengths, prev = random_batch(dictionary, torch.Generator().manual_seed(1))
    with torch.no_grad(), flops.measuring(deep) as full, flops.measuring(shallow) as cut:
        deep(src, src_lengths, prev)
        shallow(src, src_lengths, prev)
    assert cut.sums["encoder_flops_full"] == full.sums["encoder_flops_spent"]
    assert cut.sums["decoder_flops_full"] == full.sums["decoder_flops_spent"]
    report = flops.speedup_report(cut.sums)
    assert report["enc_speedup"] == pytest.approx(2.0)  # half the layers, every position in each
    assert 1.0 < report["dec_speedup"] < 2.0  # the output projection is not halved
    # ... and a checkpoint of the truncated model keeps what it was cut from
    again = build_hashee(dictionary, layers=2)
    again.load_state_dict(shallow.state_dict())
    assert int(again.decoder.full_depth) == 4


def test_a_checkpoint_shallower_than_the_model_is_refused():
    dictionary = tiny_dictionary()
    with pytest.raises(HashEEError, match="does not fit"):
        build_hashee(dictionary, layers=4).load_state_dict(build_hashee(dictionary, layers=2).state_dict())
