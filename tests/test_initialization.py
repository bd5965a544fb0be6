"""--weight-init: BART's N(0, 0.02) by default, fairseq Transformer's on request."""

import math

import pytest

from helpers import build_hashee, tiny_dictionary

DIM, FFN = 64, 256  # wide enough for the weights' spread to be measured to a few percent


def _std(tensor):
    return tensor.float().std().item()


@pytest.mark.parametrize("init", ["bart", "transformer"])
def test_weights_start_with_the_chosen_spread(init):
    model = build_hashee(
        tiny_dictionary(512), encoder_embed_dim=DIM, decoder_embed_dim=DIM, encoder_ffn_embed_dim=FFN,
        decoder_ffn_embed_dim=FFN, weight_init=init,
    )  # fmt: skip
    embed, positions = model.encoder.embed_tokens, model.encoder.embed_positions
    layer = model.decoder.layers[0]
    if init == "bart":
        expected = {"embed": 0.02, "positions": 0.02, "q_proj": 0.02, "fc1": 0.02}
    else:
        xavier = math.sqrt(2.0 / (DIM + FFN))
        # attention's scaled xavier: gain 1/sqrt(2), uniform bound sqrt(6 / (2 d)) / sqrt(2)
        expected = {"embed": DIM**-0.5, "positions": DIM**-0.5, "q_proj": math.sqrt(2.0 / (2 * DIM) / 2), "fc1": xavier}
    found = {
        "embed": _std(embed.weight[embed.padding_idx + 1 :]),
        "positions": _std(positions.weight[positions.padding_idx + 1 :]),
        "q_proj": _std(layer.encoder_attn.q_proj.weight),
        "fc1": _std(layer.fc1.weight),
    }
    for name, value in expected.items():
        assert abs(found[name] - value) < 0.08 * value, (name, found[name], value)
    if init == "transformer":
        assert embed.weight[embed.padding_idx].abs().sum() == 0
    assert model.decoder.output_projection.weight is embed.weight  # still shared
