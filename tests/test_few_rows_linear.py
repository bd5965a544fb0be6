"""Products over gathered tokens may use another kernel; they must compute the same."""

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from fairseq_hashee.modules import few_rows_linear as gl

from helpers import build_pair, random_batch, tiny_dictionary


def _layer(in_dim=48, out_dim=80, bias=True):
    torch.manual_seed(0)
    return torch.nn.Linear(in_dim, out_dim, bias=bias).eval()


def _ops(fn):
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {event.name for event in prof.events()}


@pytest.mark.parametrize("rows", [1, 7, gl.MAX_ROWS, gl.MAX_ROWS + 1])
@pytest.mark.parametrize("bias", [True, False])
def test_same_values_as_the_layer(rows, bias):
    layer = _layer(bias=bias)
    x = torch.randn(rows, 1, 48)
    with torch.no_grad():
        ours, reference = gl.few_rows_linear(layer, x), layer(x)
    assert ours.shape == reference.shape
    assert torch.allclose(ours, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_kernel_follows_rows_and_autograd():
    layer = _layer()
    small, large = torch.randn(9, 48), torch.randn(gl.MAX_ROWS + 1, 48)
    with torch.no_grad():
        assert "mkldnn::_linear_pointwise" in _ops(lambda: gl.few_rows_linear(layer, small))
        assert "mkldnn::_linear_pointwise" not in _ops(lambda: gl.few_rows_linear(layer, large))
    # Training needs gradients, which oneDNN's op does not give: the layer itself runs.
    out = gl.few_rows_linear(layer, small.requires_grad_())
    out.sum().backward()
    assert small.grad is not None and layer.weight.grad is not None
    layer.train()
    with torch.no_grad():
        assert "mkldnn::_linear_pointwise" not in _ops(lambda: gl.few_rows_linear(layer, small))


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
@pytest.mark.parametrize("heads", ["shared", "per-layer"])
def test_output_projection_of_a_decoding_step(heads):
    """A generation step's output projection (a row per hypothesis against the vocabulary)
    goes to oneDNN and gives stock BART's logits, computed with F.linear."""
    dictionary = tiny_dictionary()
    reference, model = build_pair(dictionary, exit_heads=heads)
    generator = torch.Generator().manual_seed(0)
    src, src_lengths, prev = random_batch(dictionary, generator)
    with torch.no_grad():
        encoder_out = model.encoder(src, src_lengths)
        ours_state, theirs_state = {}, {}
        for step in range(prev.size(1)):
            tokens = prev[:, : step + 1]
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                ours = model.decoder(tokens, encoder_out, incremental_state=ours_state)[0]
            theirs = reference.decoder(tokens, encoder_out, incremental_state=theirs_state)[0]
            # no exits: the layers are fairseq's own, so the projection is the only oneDNN product
            assert "mkldnn::_linear_pointwise" in {event.name for event in prof.events()}
            assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-5)
