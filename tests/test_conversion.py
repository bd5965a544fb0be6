"""Converting Hugging Face CPT / BART checkpoints, checked against transformers itself.

The reference CPT (tests/hf_reference.py) is transformers' BertModel and
BartDecoder computed the way CPT computes generation; its weights are saved
under the released checkpoints' key names, converted, and loaded into
hashee_cpt with every exit at the last layer. The converted model is the one
the printed "fine-tune with:" options build (and one test parses the whole
printed command with fairseq's own parser).
"""

import json
import os
import shlex
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")
from fairseq import options, tasks  # noqa: E402
from fairseq.data import Dictionary  # noqa: E402
from fairseq.dataclass.utils import convert_namespace_to_omegaconf  # noqa: E402
from fairseq.sequence_generator import SequenceGenerator  # noqa: E402
from fairseq.utils import get_activation_fn  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers.activations import ACT2FN  # noqa: E402

import fairseq_hashee  # noqa: E402
from fairseq_hashee.cli import convert as convert_cli  # noqa: E402
from fairseq_hashee.cli.convert import build_checked_model, choose_arch, convert  # noqa: E402
from fairseq_hashee.conversion.hf_files import load_config, load_vocab, load_weights, read_safetensors  # noqa: E402
from fairseq_hashee.conversion.key_mapping import _ACTIVATIONS, convert_state  # noqa: E402
from fairseq_hashee.conversion.vocabulary import map_vocab  # noqa: E402
from fairseq_hashee.errors import HashEEError  # noqa: E402

from hf_reference import BERT_VOCAB, DEC, DIM, SHARED, bart_reference, cpt_logits, cpt_reference, save_cpt  # noqa: E402  # noqa: E402

ATOL = 1e-4
USER_DIR = os.path.dirname(fairseq_hashee.__file__)
CPT_TIED = (
    "model.encoder.embeddings.word_embeddings.weight",
    "model.shared.weight",
    "model.decoder.embed_tokens.weight",
    "lm_head.weight",
)
BART_TIED = (
    "model.shared.weight",
    "model.encoder.embed_tokens.weight",
    "model.decoder.embed_tokens.weight",
    "lm_head.weight",
)


def _load_converted(out_dir):
    dictionary = Dictionary.load(str(out_dir / "dict.txt"))
    state = torch.load(out_dir / "model.pt", weights_only=True)
    return dictionary, state


def _fairseq_model(hf_dir, out_dir):
    """The converted checkpoint, loaded as fairseq-train --restore-file would."""
    report = convert(str(hf_dir), str(out_dir))
    dictionary, state = _load_converted(out_dir)
    converted = convert_state(
        load_weights(str(hf_dir)), load_config(str(hf_dir)), map_vocab(load_vocab(str(hf_dir)), "vocab"), "hf"
    )
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
            ours[row, width - len(sent) :] = mapped
        else:
            ours[row, : len(sent)] = mapped
    return hf, mask, ours


def _cpt_gaps(bert, decoder, model):
    """Largest |difference| from the reference CPT on a padded batch: (encoder states, logits)."""
    order = map_vocab(BERT_VOCAB, "vocab").order
    fairseq_of = {int(hf): fs for fs, hf in enumerate(order)}
    cls, sep = BERT_VOCAB.index("[CLS]"), BERT_VOCAB.index("[SEP]")
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
    width, enc_gap, logit_gap = src_hf.size(1), 0.0, 0.0
    for row, n in enumerate(src_mask.sum(1).tolist()):
        enc_gap = max(enc_gap, float((enc[row, width - n :] - hidden[row, :n]).abs().max()))
        logit_gap = max(logit_gap, float((logits[row, :6] - logits_hf[row, :6][:, order]).abs().max()))
    return enc_gap, logit_gap


def _bart_inputs(reference, vocab):
    """A padded batch for a reference BART: (HF ids, mask, HF decoder input), fairseq's (source, prev), order."""
    order = map_vocab(vocab, "vocab").order
    fairseq_of = {int(hf): fs for fs, hf in enumerate(order)}
    pad, eos = reference.config.pad_token_id, reference.config.eos_token_id
    gen = torch.Generator().manual_seed(2)
    first = 6 if vocab is BERT_VOCAB else 4
    sentences = [torch.randint(first, len(vocab) - 1, (n,), generator=gen).tolist() + [eos] for n in (8, 4)]
    src_hf, mask, src_ours = _batch(sentences, pad, fairseq_of, left_pad=True)
    prev = [[eos] + s[:5] for s in sentences]
    prev_hf, _, prev_ours = _batch(prev, pad, fairseq_of, left_pad=False)
    return (src_hf, mask, prev_hf), (src_ours, prev_ours), order


def _bart_gap(reference, vocab, model):
    """Largest |logit difference| from the reference BART on a padded batch (padding left out)."""
    (src_hf, mask, prev_hf), (src_ours, prev_ours), order = _bart_inputs(reference, vocab)
    with torch.no_grad():
        logits_hf = reference(input_ids=src_hf, attention_mask=mask, decoder_input_ids=prev_hf).logits[..., order]
        logits = model(src_ours, mask.sum(1), prev_ours)[0]
    real = prev_hf.ne(reference.config.pad_token_id)
    return float((logits - logits_hf)[real].abs().max())


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
    assert dictionary.bos() == fairseq_of[BERT_VOCAB.index("[CLS]")]
    assert dictionary.eos() == fairseq_of[BERT_VOCAB.index("[SEP]")]
    assert max(_cpt_gaps(bert, decoder, model)) < ATOL


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
            _, logits = cpt_logits(
                bert,
                decoder,
                torch.tensor([source]),
                torch.ones(1, len(source), dtype=torch.long),
                torch.tensor([tokens]),
            )
            last = logits[0, -1].clone()
            last[0] = -float("inf")  # fairseq never emits padding
            if step == 0:
                last[sep] = -float("inf")  # nor eos at the first step (min_len 1)
            tokens.append(int(last.argmax()))
            if tokens[-1] == sep:
                break
        src = torch.tensor([[fairseq_of[i] for i in source]])
        generator = SequenceGenerator([model], dictionary, beam_size=1, max_len_a=0, max_len_b=steps)
        hypo = generator.generate(
            [model], {"net_input": {"src_tokens": src, "src_lengths": torch.tensor([len(source)])}}
        )
    ours = [int(order[i]) for i in hypo[0][0]["tokens"].tolist()]
    expected = tokens[1:] if tokens[-1] == sep else tokens[1:] + [sep]  # fairseq ends with eos
    assert ours == expected


@pytest.mark.parametrize("chinese", [False, True])
def test_bart_conversion_matches_transformers(tmp_path, chinese):
    reference, hf_dir, vocab = bart_reference(tmp_path / "bart", chinese=chinese)
    assert (hf_dir / "model.safetensors").exists()
    report, dictionary, model = _fairseq_model(hf_dir, tmp_path / "out")
    assert report["family"] == "bart" and report["arch"] == "hashee_bart_base"
    assert _bart_gap(reference, vocab, model) < ATOL

    # greedy decoding: transformers' generate and fairseq's SequenceGenerator
    (src_hf, mask, _), (src_ours, _), order = _bart_inputs(reference, vocab)
    pad = reference.config.pad_token_id
    with torch.no_grad():
        theirs = reference.generate(
            src_hf[:1], num_beams=1, do_sample=False, max_new_tokens=8, min_new_tokens=1, bad_words_ids=[[pad]]
        )[0, 1:].tolist()
        src = src_ours[:1]
        generator = SequenceGenerator([model], dictionary, beam_size=1, max_len_a=0, max_len_b=8)
        ours = generator.generate(
            [model], {"net_input": {"src_tokens": src, "src_lengths": torch.tensor([src.size(1)])}}
        )
    ours = [int(order[i]) for i in ours[0][0]["tokens"].tolist()]
    assert ours[: len(theirs)] == theirs


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
@pytest.mark.parametrize("family, kept", [("cpt", n) for n in CPT_TIED] + [("bart", n) for n in BART_TIED])
def test_tied_embeddings_stored_under_any_one_name(tmp_path, family, kept, fmt):
    """Dropping every other copy changes nothing in the converted state, bit for bit."""
    if family == "cpt":
        full, tied = save_cpt(*cpt_reference(), tmp_path / "full", fmt), CPT_TIED
    else:
        (_, full, _), tied = bart_reference(tmp_path / "full", fmt=fmt), BART_TIED
    weights = load_weights(str(full))
    assert set(tied) <= set(weights)
    one = tmp_path / "one"
    shutil.copytree(full, one)
    kept_only = {name: tensor for name, tensor in weights.items() if name == kept or name not in tied}
    if fmt == "bin":
        torch.save(kept_only, one / "pytorch_model.bin")
    else:
        save_file(kept_only, str(one / "model.safetensors"))

    report = convert(str(one), str(tmp_path / "out_one"))
    convert(str(full), str(tmp_path / "out_full"))
    assert report["family"] == family
    _, state_one = _load_converted(tmp_path / "out_one")
    _, state_full = _load_converted(tmp_path / "out_full")
    assert state_one["model"].keys() == state_full["model"].keys()
    assert all(torch.equal(state_one["model"][k], state_full["model"][k]) for k in state_full["model"])


@pytest.mark.parametrize("family", ["cpt", "bart"])
def test_safetensors_save_model_files_match_their_reference(tmp_path, family):
    """safetensors.torch.save_model keeps one tied name (lm_head.weight); the
    converted model still computes what the reference does."""
    if family == "cpt":
        bert, decoder = cpt_reference(seed=5)
        hf_dir, tied = save_cpt(bert, decoder, tmp_path / "cpt", "save_model"), CPT_TIED
    else:
        reference, hf_dir, vocab = bart_reference(tmp_path / "bart", seed=5, fmt="save_model")
        tied = BART_TIED
    stored = [name for name in read_safetensors(str(hf_dir / "model.safetensors")) if name in tied]
    assert stored == ["lm_head.weight"]
    report, _, model = _fairseq_model(hf_dir, tmp_path / "out")
    assert report["family"] == family
    gap = max(_cpt_gaps(bert, decoder, model)) if family == "cpt" else _bart_gap(reference, vocab, model)
    assert gap < ATOL


@pytest.mark.parametrize(
    "kept, changed",
    [
        ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"),
        ("model.shared.weight", "lm_head.weight"),
    ],
)
def test_tied_copies_that_disagree_are_named(tmp_path, kept, changed):
    _, hf_dir, _ = bart_reference(tmp_path / "bart", fmt="bin")
    weights = {
        name: tensor
        for name, tensor in load_weights(str(hf_dir)).items()
        if name in (kept, changed) or name not in BART_TIED
    }
    weights[changed] = weights[changed] + 1
    torch.save(weights, hf_dir / "pytorch_model.bin")
    with pytest.raises(HashEEError) as err:
        convert(str(hf_dir), str(tmp_path / "out"))
    message = str(err.value)
    assert kept in message and changed in message and "differs" in message and "\n" not in message
    assert not (tmp_path / "out").exists()


def test_every_mapped_activation_computes_the_same_function():
    x = torch.linspace(-8, 8, 4001)
    for theirs, ours in _ACTIVATIONS.items():
        assert (ACT2FN[theirs](x) - get_activation_fn(ours)(x)).abs().max() < 1e-5, theirs


@pytest.mark.parametrize("activation, flag", [("relu", "relu"), ("gelu_new", "gelu_accurate"), ("tanh", "tanh")])
def test_bart_activation_reaches_both_stacks(tmp_path, activation, flag):
    reference, hf_dir, vocab = bart_reference(tmp_path / "bart", activation_function=activation)
    report, _, model = _fairseq_model(hf_dir, tmp_path / "out")
    assert f"--activation-fn {flag}" in report["options"]
    assert _bart_gap(reference, vocab, model) < ATOL


@pytest.mark.parametrize("activation, flag", [("gelu_python", None), ("relu", "relu"), ("gelu_new", "gelu_accurate")])
def test_cpt_activation_is_the_decoders_only(tmp_path, activation, flag):
    """CPT's BERT encoder is GELU whatever activation_function says; the decoder follows it."""
    bert, decoder = cpt_reference(activation_function=activation)
    report, _, model = _fairseq_model(save_cpt(bert, decoder, tmp_path / "cpt"), tmp_path / "out")
    assert (f"--activation-fn {flag}" in report["options"]) if flag else ("--activation-fn" not in report["options"])
    assert max(_cpt_gaps(bert, decoder, model)) < ATOL


@pytest.mark.parametrize("family", ["cpt", "bart"])
def test_scale_embedding_reaches_the_model(tmp_path, family):
    """scale_embedding: true scales BART's token embeddings in both stacks and CPT's
    in its decoder (BERT's embedding never scales): printed as --scale-embedding."""
    if family == "cpt":
        bert, decoder = cpt_reference(scale_embedding=True)
        hf_dir = save_cpt(bert, decoder, tmp_path / "cpt")
    else:
        reference, hf_dir, vocab = bart_reference(tmp_path / "bart", scale_embedding=True)
    assert json.loads((hf_dir / "config.json").read_text())["scale_embedding"] is True
    report, _, model = _fairseq_model(hf_dir, tmp_path / "out")
    assert "--scale-embedding" in report["options"].split()
    assert model.decoder.embed_scale == pytest.approx(DIM**0.5)
    gap = max(_cpt_gaps(bert, decoder, model)) if family == "cpt" else _bart_gap(reference, vocab, model)
    assert gap < ATOL


def _printed_command_model(hf_dir, tmp_path, capsys):
    """hashee-convert's printed command, run through fairseq-train's own parser and
    model building up to --restore-file: the model a user gets."""
    out = tmp_path / "out"
    convert_cli.main([str(hf_dir), "-o", str(out)])
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("fine-tune with: "))
    words = shlex.split(line[len("fine-tune with: ") :])
    assert words[:2] == ["fairseq-train", "..."]
    data = tmp_path / "data-bin"
    data.mkdir()
    for side in ("src", "tgt"):
        shutil.copy(out / "dict.txt", data / f"dict.{side}.txt")
    words = [str(data), "-s", "src", "-t", "tgt"] + words[2:]
    words[words.index("--user-dir") + 1] = USER_DIR
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), words))
    task = tasks.setup_task(cfg.task)
    # Exit tables come from training data; without them every token runs every
    # layer, as in the converter's checked model.
    model = task.build_model(cfg.model, from_checkpoint=True)
    state = torch.load(cfg.checkpoint.restore_file, weights_only=True)
    model.load_state_dict(state["model"], strict=True, model_cfg=cfg.model)
    return model.eval()


@pytest.mark.parametrize(
    "family, config",
    [
        ("cpt", {}),
        ("cpt", {"activation_function": "relu", "scale_embedding": True}),
        ("bart", {"scale_embedding": True}),
        ("bart", {"activation_function": "relu"}),
        ("bart", {"activation_function": "gelu_new", "decoder_attention_heads": 4}),
    ],
)
def test_printed_command_builds_the_checked_model(tmp_path, capsys, family, config):
    if family == "cpt":
        bert, decoder = cpt_reference(seed=7, **config)
        hf_dir = save_cpt(bert, decoder, tmp_path / "cpt")
    else:
        reference, hf_dir, vocab = bart_reference(tmp_path / "bart", seed=7, **config)
    printed = _printed_command_model(hf_dir, tmp_path, capsys)
    _, _, checked = _fairseq_model(hf_dir, tmp_path / "checked")
    gen = torch.Generator().manual_seed(3)
    src = torch.randint(4, len(checked.encoder.dictionary), (2, 7), generator=gen)
    prev = torch.cat([torch.full((2, 1), checked.decoder.dictionary.eos()), src[:, :4]], dim=1)
    with torch.no_grad():
        assert torch.equal(printed(src, torch.tensor([7, 7]), prev)[0], checked(src, torch.tensor([7, 7]), prev)[0])
    gap = max(_cpt_gaps(bert, decoder, printed)) if family == "cpt" else _bart_gap(reference, vocab, printed)
    assert gap < ATOL


def test_own_safetensors_reader_equals_the_library(tmp_path):
    from safetensors.torch import load_file

    _, hf_dir, _ = bart_reference(tmp_path / "bart")
    ours, theirs = read_safetensors(str(hf_dir / "model.safetensors")), load_file(str(hf_dir / "model.safetensors"))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def _set_config(hf_dir, **options):
    config = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps({**config, **options}))


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
        (
            lambda d, s: s.update({"model.encoder.adapter.weight": torch.zeros(1)}),
            "unexpected keys model.encoder.adapter.weight",
        ),
        (lambda d, s: s.update({"lm_head.weight": s["lm_head.weight"] + 1}), "lm_head.weight differs from"),
        (lambda d, s: s.update({"final_logits_bias": torch.ones(1, len(BERT_VOCAB))}), "final_logits_bias is not zero"),
        (lambda d, s: (d / "vocab.txt").write_text("[PAD]\n[UNK]\n"), "neither a BART vocabulary"),
        (lambda d, s: (d / "vocab.txt").unlink(), "no vocab.txt (CPT, Chinese BART) or vocab.json"),
        (lambda d, s: (d / "config.json").write_text("{"), "config.json: not a JSON config"),
        (lambda d, s: _set_config(d, scale_embedding="yes"), "scale_embedding is not true or false ('yes')"),
        (lambda d, s: _set_config(d, activation_function="silu"), "activation_function 'silu' has no fairseq"),
        (lambda d, s: _set_config(d, decoder_start_token_id=3), "decoder_start_token_id 3 is not 4, the end-of"),
        (
            lambda d, s: [s.pop(k) for k in list(s)] and s.update({"encoder.weight": torch.zeros(1)}),
            "neither a CPT nor a BART checkpoint",
        ),
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
    _, hf_dir, vocab = bart_reference(tmp_path / "bart")
    encoder = tmp_path / "encoder.json"
    encoder.write_text(json.dumps({s: 1000 + i for i, s in enumerate(vocab[4:-1])}))
    convert(str(hf_dir), str(tmp_path / "out"), gpt2_encoder=str(encoder))
    lines = (tmp_path / "out" / "dict.txt").read_text().splitlines()
    assert lines[0] == "1000 0" and lines[-1] == "<mask> 0" and len(lines) == len(vocab) - 4
    with pytest.raises(HashEEError, match=r"missing.json: no such file \(expected a JSON GPT-2 encoder.json\)"):
        convert(str(hf_dir), str(tmp_path / "out2"), gpt2_encoder=str(tmp_path / "missing.json"))
