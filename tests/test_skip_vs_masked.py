"""The skipping path computes what the masked reference definition computes."""

import pytest
import torch

from helpers import PRECISIONS, build_hashee, random_batch, random_tables, set_exit_impl, tiny_dictionary


def _forward(model, impl, batch):
    set_exit_impl(model, impl)
    src, src_lengths, prev = batch
    torch.manual_seed(0)  # the same per-occurrence draws (draw-set tables) for both paths
    enc = model.encoder(src, src_lengths)["encoder_out"][0]
    logits = model(src, src_lengths, prev)[0]
    return enc, logits


@pytest.mark.parametrize("device, dtype, atol", PRECISIONS)
@pytest.mark.parametrize("seed, draw_sets", [(0, False), (1, False), (2, False), (3, True), (4, True)])
@pytest.mark.parametrize("train", [False, True])
def test_skip_equals_masked(seed, draw_sets, train, device, dtype, atol):
    dictionary = tiny_dictionary()
    model = build_hashee(dictionary, seed=seed, layers=4)
    gen = torch.Generator().manual_seed(100 + seed)
    random_tables(model, gen, draw_sets=draw_sets)
    model.to(device=device, dtype=dtype)
    batch = random_batch(dictionary, gen, bsz=5, src_len=11, tgt_len=8, device=device)
    src, _, prev = batch
    model.train(train)  # dropout is 0: training mode must not change the result

    results = {}
    for impl in ("masked", "skip"):
        model.zero_grad()
        enc, logits = _forward(model, impl, batch)
        logits[prev.ne(1)].float().logsumexp(-1).sum().backward()
        grads = {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}
        results[impl] = (enc.detach().float(), logits.detach().float(), grads)

    (enc_m, logits_m, grads_m), (enc_s, logits_s, grads_s) = results["masked"], results["skip"]
    assert (enc_m - enc_s)[src.ne(1).t()].abs().max() < atol
    assert (logits_m - logits_s)[prev.ne(1)].abs().max() < atol
    assert grads_m.keys() == grads_s.keys()
    for name in grads_m:
        assert torch.allclose(grads_m[name], grads_s[name], atol=10 * atol), name


def test_exits_change_the_output():
    """Guards the tests above: the tables really take effect."""
    dictionary = tiny_dictionary()
    model = build_hashee(dictionary, layers=4)
    gen = torch.Generator().manual_seed(7)
    batch = random_batch(dictionary, gen)
    with torch.no_grad():
        _, full = _forward(model, "skip", batch)
        random_tables(model, gen)
        _, exited = _forward(model, "skip", batch)
    assert (full - exited).abs().max() > 1e-3


def _refuse_to_run(monkeypatch, layer):
    """Every way a layer computes goes through fairseq's ``forward`` (its plan is ``EVERY``) or the
    feed-forward block that ends a prefix's or a step's update."""

    def ran(*args, **kwargs):
        pytest.fail("a layer with no active token ran")

    monkeypatch.setattr(layer, "forward", ran)
    monkeypatch.setattr(layer, "_feed_forward", ran)


def test_a_layer_nobody_reaches_is_skipped(monkeypatch):
    """Layers above every token's exit do no work and leave the states untouched."""
    dictionary = tiny_dictionary()
    model = build_hashee(dictionary, layers=3)
    table = torch.ones(len(dictionary), dtype=torch.long)
    table[: dictionary.nspecial] = 3  # special symbols always run every layer
    model.encoder.set_exit_table(table)
    model.decoder.set_exit_table(table)
    for layer in [*model.encoder.layers[1:], *model.decoder.layers[1:]]:
        _refuse_to_run(monkeypatch, layer)
    gen = torch.Generator().manual_seed(3)
    src = torch.randint(dictionary.nspecial, len(dictionary), (3, 6), generator=gen)
    prev = torch.randint(dictionary.nspecial, len(dictionary), (3, 4), generator=gen)
    with torch.no_grad():
        encoder_out = model.encoder(src, torch.full((3,), 6), return_all_hiddens=True)
        states = encoder_out["encoder_states"]
        assert torch.equal(states[1], states[2]) and torch.equal(states[2], states[3])
        inner = model.decoder(prev, encoder_out=encoder_out)[1]["inner_states"]
        assert torch.equal(inner[1], inner[2]) and torch.equal(inner[2], inner[3])
        state = {}
        for step in range(1, 4):  # a step whose rows all exit at layer 1 only hands its input to the cache
            model.decoder(prev[:, :step], encoder_out=encoder_out, incremental_state=state)


def test_special_symbols_must_run_every_layer():
    dictionary = tiny_dictionary()
    model = build_hashee(dictionary, layers=3)
    with pytest.raises(
        ValueError,
        match=r"t: encoder exit table sends special symbol 0 \('<s>'\) to layer 1; "
        "special symbols always run all 3 layers",
    ):
        model.encoder.set_exit_table(torch.ones(len(dictionary), dtype=torch.long), "t")


@pytest.mark.parametrize("seed", range(3))
def test_inference_skip_equals_masked(seed):
    """Without autograd the encoder writes updates into its states in place: same result."""
    dictionary = tiny_dictionary()
    model = build_hashee(dictionary, seed=seed, layers=4)
    gen = torch.Generator().manual_seed(200 + seed)
    random_tables(model, gen)
    src, src_lengths, prev = random_batch(dictionary, gen, bsz=5, src_len=11, tgt_len=8)
    with torch.no_grad():
        masked = _forward(model, "masked", (src, src_lengths, prev))
        skip = _forward(model, "skip", (src, src_lengths, prev))
    assert (masked[0] - skip[0])[src.ne(1).t()].abs().max() < 1e-5
    assert (masked[1] - skip[1])[prev.ne(1)].abs().max() < 1e-5
