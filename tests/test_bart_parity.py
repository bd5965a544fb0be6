"""With every exit at the last layer, HashEE BART computes what fairseq's BART computes."""

import pytest
import torch
from fairseq.sequence_generator import SequenceGenerator

from helpers import build_pair, random_batch, set_exit_impl, tiny_dictionary

ATOL = 1e-5


@pytest.fixture(scope="module")
def pair():
    return build_pair(tiny_dictionary())


def test_parameter_names_are_barts(pair):
    reference, model = pair
    # the exit tables and the depth each stack counts as full (static truncation) are HashEE's own
    ours = set(model.state_dict()) - {
        "encoder.exit_table",
        "decoder.exit_table",
        "encoder.full_depth",
        "decoder.full_depth",
    }
    assert ours == set(reference.state_dict())


@pytest.mark.parametrize("impl", ["skip", "masked"])
def test_encoder_and_logits_match_fairseq_bart(pair, impl):
    reference, model = pair
    set_exit_impl(model, impl)
    gen = torch.Generator().manual_seed(1)
    src, src_lengths, prev = random_batch(reference.encoder.dictionary, gen, bsz=5)
    with torch.no_grad():
        ref_enc = reference.encoder(src, src_lengths)
        enc = model.encoder(src, src_lengths)
        ref_logits = reference(src, src_lengths, prev)[0]
        logits = model(src, src_lengths, prev)[0]
    keep_src = src.ne(1).t()  # time-major, like encoder_out
    diff = (ref_enc["encoder_out"][0] - enc["encoder_out"][0])[keep_src]
    assert diff.abs().max() < ATOL
    keep_tgt = prev.ne(1)
    assert (ref_logits - logits)[keep_tgt].abs().max() < ATOL


def test_beam_search_matches_fairseq_bart(pair):
    reference, model = pair
    set_exit_impl(model, "skip")
    dictionary = reference.decoder.dictionary
    gen = torch.Generator().manual_seed(2)
    src, src_lengths, _ = random_batch(dictionary, gen, bsz=3)
    sample = {"net_input": {"src_tokens": src, "src_lengths": src_lengths}}
    outputs = []
    for m in (reference, model):
        generator = SequenceGenerator([m], dictionary, beam_size=4, max_len_b=12)
        with torch.no_grad():
            outputs.append(generator.generate([m], sample))
    for ref_hypos, hypos in zip(*outputs):
        assert [h["tokens"].tolist() for h in ref_hypos] == [h["tokens"].tolist() for h in hypos]
        for a, b in zip(ref_hypos, hypos):
            assert torch.allclose(a["positional_scores"], b["positional_scores"], atol=ATOL)
