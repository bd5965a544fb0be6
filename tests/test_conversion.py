"""Converting Hugging Face CPT / BART checkpoints, checked against transformers itself.

The reference CPT (tests/hf_reference.py) is transformers' BertModel and
BartDecoder computed the way CPT computes generation; its weights are saved
under the released checkpoints' key names, converted, and loaded into
hashee_cpt with every exit at the last layer.
"""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
from fairseq.data import Dictionary  # noqa: E402
from fairseq.sequence_generator import SequenceGenerator  # noqa: E402
from transformers import BartConfig, BartForConditionalGeneration  # noqa: E402

from fairseq_hashee.cli.convert import build_checked_model, choose_arch, convert  # noqa: E402
from fairseq_hashee.conversion.hf_files import load_config, load_vocab, load_weights, read_safetensors  # noqa: E402
from fairseq_hashee.conversion.key_mapping import convert_state  # noqa: E402
from fairseq_hashee.conversion.vocabulary import map_vocab  # noqa: E402
from fairseq_hashee.errors import HashEEError  # noqa: E402
from hf_reference import BERT_VOCAB, DEC, DIM, FFN, HEADS, MAX_POS, SHARED  # noqa: E402
from hf_reference import cpt_logits, cpt_reference, randomize, save_cpt  # noqa: E402

ATOL = 1e-4


def _load_converted(out_dir):
    dictionary = Dictionary.load(str(out_dir / "dict.txt"))
    state = torch.load(out_dir / "model.pt", weights_only=True)
    return dictionary, state


def _fairseq_model(hf_dir, out_dir):
    """The converted checkpoint, loaded as fairseq-train --restore-file would."""
    report = convert(str(hf_dir), str(out_dir))
    dictionary, state = _load_converted(out_dir)
    converted = convert_state(load_weights(str(hf_dir)), load_config(str(hf_dir)),
                              map_vocab(load_vocab(str(hf_dir)), "vocab"), "hf")
    arch, _ = choose_arch(converted)
    converted.state = state["model"]
    model = build_checked_model(converted, arch, dictionary).eval()
    return report, dictionary, model


def _batch(hf_ids, pad, fairseq_of, left_pad):
    """The same sentences as a right-padded HF batch and a fairseq batch (ids mapped)."""
    width = max(len(s) for s in hf_ids)
    hf = torch.full((len(hf_ids), width), pad)
    mask = torch.zeros_like(hf)
    ours = torch.full((len(hf_ids), width), 1)  # fairseq <pad>
    for row, sent in enumerate(hf_ids):
        hf[row, : len(sent)] = torch.tensor(sent)
        mask[row, : len(sent)] = 1
        mapped = torch.tensor([fairseq_of[i] for i in sent])
        if left_pad:
            ours[row, width - len(sent):] = mapped
        else:
            ours[row, : len(sent)] = mapped
    return hf, mask, ours


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_cpt_conversion_matches_transformers(tmp_path, fmt):
    bert, decoder = cpt_reference()
    hf_dir = save_cpt(bert, decoder, tmp_path / "cpt", fmt)
    report, dictionary, model = _fairseq_model(hf_dir, tmp_path / "out")
    assert report["family"] == "cpt" and report["arch"] == "hashee_cpt_base"
    assert "1 understanding decoder (not used for generation) tensors" not in report["dropped"]
    assert any("understanding decoder" in note for note in report["dropped"])
    assert int(model.encoder.exit_table.min()) == SHARED and int(model.decoder.exit_table.min()) == DEC

    order = map_vocab(BERT_VOCAB, "vocab").order
    fairseq_of = {int(hf): fs for fs, hf in enumerate(order)}
    cls, sep = BERT_VOCAB.index("[CLS]"), BERT_VOCAB.index("[SEP]")
    assert dictionary.bos() == fairseq_of[cls] and dictionary.eos() == fairseq_of[sep]
    gen = torch.Generator().manual_seed(1)
    body = [torch.randint(6, len(BERT_VOCAB), (n,), generator=gen).tolist() for n in (9, 5, 7)]
    sources = [[cls] + b + [sep] for b in body]
    targets = [[cls] + b[:4] + [sep] for b in body]
    src_hf, src_mask, src_ours = _batch(sources, 0, fairseq_of, left_pad=True)
    dec_in = [[sep] + t[:-1] for t in targets]  # CPT starts decoding from [SEP]
    prev_hf, _, prev_ours = _batch(dec_in, 0, fairseq_of, left_pad=False)

    with torch.no_grad():
        hidden, logits_hf = cpt_logits(bert, decoder, src_hf, src_mask, prev_hf)
        enc = model.encoder(src_ours, src_mask.sum(1))["encoder_out"][0].transpose(0, 1)
        logits = model(src_ours, src_mask.sum(1), prev_ours)[0]
    width = src_hf.size(1)
    for row, n in enumerate(src_mask.sum(1).tolist()):
        assert (enc[row, width - n:] - hidden[row, :n]).abs().max() < ATOL
        assert (logits[row, :6] - logits_hf[row, :6][:, order]).abs().max() < ATOL


def test_cpt_greedy_decoding_matches_transformers(tmp_path):
    bert, decoder = cpt_reference(seed=3)
    _, dictionary, model = _fairseq_model(save_cpt(bert, decoder, tmp_path / "cpt"), tmp_path / "out")
    order = map_vocab(BERT_VOCAB, "vocab").order
    fairseq_of = {int(hf): fs for fs, hf in enumerate(order)}
    cls, sep = BERT_VOCAB.index("[CLS]"), BERT_VOCAB.index("[SEP]")
    source = [cls] + list(range(6, 20)) + [sep]
    steps = 8
    with torch.no_grad():
        tokens = [sep]
        for step in range(steps):
            _, logits = cpt_logits(bert, decoder, torch.tensor([source]), torch.ones(1, len(source), dtype=torch.long),
                                    torch.tensor([tokens]))
            last = logits[0, -1].clone()
            last[0] = -float("inf")  # fairseq never emits padding
            if step == 0:
                last[sep] = -float("inf")  # nor eos at the first step (min_len 1)
            tokens.append(int(last.argmax()))
            if tokens[-1] == sep:
                break
        src = torch.tensor([[fairseq_of[i] for i in source]])
        generator = SequenceGenerator([model], dictionary, beam_size=1, max_len_a=0, max_len_b=steps)
        hypo = generator.generate([model], {"net_input": {"src_tokens": src, "src_lengths": torch.tensor([len(source)])}})
    ours = [int(order[i]) for i in hypo[0][0]["tokens"].tolist()]
    expected = tokens[1:] if tokens[-1] == sep else tokens[1:] + [sep]  # fairseq ends with eos
    assert ours == expected


ENGLISH_BART_VOCAB = ["<s>", "<pad>", "</s>", "<unk>"] + [f"w{i}" for i in range(30)] + ["<mask>"]


def _bart_reference(tmp_path, seed=0, chinese=False):
    """A tiny transformers BART: English (vocab.json, fairseq layout) or Chinese
    (fnlp/bart-*-chinese style: BERT vocab.txt, [PAD] 0, decoding from [SEP])."""
    vocab = BERT_VOCAB if chinese else ENGLISH_BART_VOCAB
    pad, bos, eos = (vocab.index("[PAD]"), vocab.index("[CLS]"), vocab.index("[SEP]")) if chinese else (1, 0, 2)
    model = randomize(BartForConditionalGeneration(BartConfig(
        vocab_size=len(vocab), d_model=DIM, encoder_layers=2, decoder_layers=2, encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS, encoder_ffn_dim=FFN, decoder_ffn_dim=FFN, max_position_embeddings=MAX_POS,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, pad_token_id=pad, bos_token_id=bos,
        eos_token_id=eos, decoder_start_token_id=eos, forced_bos_token_id=None, forced_eos_token_id=None)), seed)
    with torch.no_grad():
        model.final_logits_bias.zero_()
    hf_dir = tmp_path / "bart"
    model.save_pretrained(str(hf_dir))
    if chinese:
        (hf_dir / "vocab.txt").write_text("".join(s + "\n" for s in vocab), encoding="utf-8")
    else:
        (hf_dir / "vocab.json").write_text(json.dumps({s: i for i, s in enumerate(vocab)}))
    return model, hf_dir, vocab


@pytest.mark.parametrize("chinese", [False, True])
def test_bart_conversion_matches_transformers(tmp_path, chinese):
    reference, hf_dir, vocab = _bart_reference(tmp_path, chinese=chinese)
    assert (hf_dir / "model.safetensors").exists()
    report, dictionary, model = _fairseq_model(hf_dir, tmp_path / "out")
    assert report["family"] == "bart" and report["arch"] == "hashee_bart_base"
    order = map_vocab(vocab, "vocab").order
    fairseq_of = {int(hf): fs for fs, hf in enumerate(order)}
    pad, eos = reference.config.pad_token_id, reference.config.eos_token_id
    gen = torch.Generator().manual_seed(2)
    first = 6 if chinese else 4
    sentences = [torch.randint(first, len(vocab) - 1, (n,), generator=gen).tolist() + [eos] for n in (8, 4)]
    src_hf, mask, src_ours = _batch(sentences, pad, fairseq_of, left_pad=True)
    prev = [[eos] + s[:5] for s in sentences]
    prev_hf, _, prev_ours = _batch(prev, pad, fairseq_of, left_pad=False)
    with torch.no_grad():
        logits_hf = reference(input_ids=src_hf, attention_mask=mask, decoder_input_ids=prev_hf).logits[..., order]
        logits = model(src_ours, mask.sum(1), prev_ours)[0]
        for row, p in enumerate(prev):
            assert (logits[row, : len(p)] - logits_hf[row, : len(p)]).abs().max() < ATOL

        # greedy decoding: transformers' generate and fairseq's SequenceGenerator
        theirs = reference.generate(torch.tensor([sentences[0]]), num_beams=1, do_sample=False, max_new_tokens=8,
                                    min_new_tokens=1, bad_words_ids=[[pad]])[0, 1:].tolist()
        src = src_ours[:1]
        generator = SequenceGenerator([model], dictionary, beam_size=1, max_len_a=0, max_len_b=8)
        ours = generator.generate([model], {"net_input": {"src_tokens": src, "src_lengths": torch.tensor([src.size(1)])}})
    ours = [int(order[i]) for i in ours[0][0]["tokens"].tolist()]
    assert ours[: len(theirs)] == theirs


def test_own_safetensors_reader_equals_the_library(tmp_path):
    from safetensors.torch import load_file

    _, hf_dir, _ = _bart_reference(tmp_path)
    ours, theirs = read_safetensors(str(hf_dir / "model.safetensors")), load_file(str(hf_dir / "model.safetensors"))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def _mutate_cpt(tmp_path, edit):
    bert, decoder = cpt_reference()
    hf_dir = save_cpt(bert, decoder, tmp_path / "cpt")
    state = torch.load(hf_dir / "pytorch_model.bin")
    edit(hf_dir, state)
    torch.save(state, hf_dir / "pytorch_model.bin")
    return hf_dir


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d, s: s.update({"model.encoder.adapter.weight": torch.zeros(1)}),
         "unexpected keys model.encoder.adapter.weight"),
        (lambda d, s: s.update({"lm_head.weight": s["lm_head.weight"] + 1}), "lm_head.weight differs from"),
        (lambda d, s: s.update({"final_logits_bias": torch.ones(1, len(BERT_VOCAB))}), "final_logits_bias is not zero"),
        (lambda d, s: (d / "vocab.txt").write_text("[PAD]\n[UNK]\n"), "neither a BART vocabulary"),
        (lambda d, s: (d / "vocab.txt").unlink(), "no vocab.txt (CPT, Chinese BART) or vocab.json"),
        (lambda d, s: (d / "config.json").write_text("{"), "config.json: not a JSON config"),
        (lambda d, s: [s.pop(k) for k in list(s)] and s.update({"encoder.weight": torch.zeros(1)}),
         "neither a CPT nor a BART checkpoint"),
    ],
)
def test_unrecognised_checkpoints_are_refused(tmp_path, edit, message):
    hf_dir = _mutate_cpt(tmp_path, edit)
    with pytest.raises(HashEEError, match=message.replace("(", r"\(").replace(")", r"\)")):
        convert(str(hf_dir), str(tmp_path / "out"))
    assert not (tmp_path / "out" / "model.pt").exists()


def test_existing_output_is_kept_without_force(tmp_path):
    bert, decoder = cpt_reference()
    hf_dir = save_cpt(bert, decoder, tmp_path / "cpt")
    out = tmp_path / "out"
    convert(str(hf_dir), str(out))
    before = (out / "model.pt").read_bytes()
    with pytest.raises(HashEEError, match="exists; pass --force"):
        convert(str(hf_dir), str(out))
    assert (out / "model.pt").read_bytes() == before
    convert(str(hf_dir), str(out), force=True)


def test_gpt2_encoder_names_bart_symbols_by_gpt2_id(tmp_path):
    _, hf_dir, vocab = _bart_reference(tmp_path)
    encoder = tmp_path / "encoder.json"
    encoder.write_text(json.dumps({s: 1000 + i for i, s in enumerate(vocab[4:-1])}))
    convert(str(hf_dir), str(tmp_path / "out"), gpt2_encoder=str(encoder))
    lines = (tmp_path / "out" / "dict.txt").read_text().splitlines()
    assert lines[0] == "1000 0" and lines[-1] == "<mask> 0" and len(lines) == len(vocab) - 4
    with pytest.raises(HashEEError, match=r"missing.json: no such file \(expected a JSON GPT-2 encoder.json\)"):
        convert(str(hf_dir), str(tmp_path / "out2"), gpt2_encoder=str(tmp_path / "missing.json"))
