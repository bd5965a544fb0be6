"""Tiny CPT and BART checkpoints built from transformers' own modules (test-only oracle).

CPT is put together the way its released code builds it: a BertModel whose top
DEC layers are the understanding decoder, and a BART decoder that shares the
word embeddings and cross-attends to the hidden state below those layers, with
token type 1 everywhere. Its BERT gets no hidden_act, as CPT's does not (so it
is GELU); the config's activation_function and scale_embedding reach the
decoder only.
"""

import json

import torch
from torch import nn
from transformers import BartConfig, BartForConditionalGeneration, BertConfig, BertModel
from transformers.models.bart.modeling_bart import BartDecoder

DIM, HEADS, FFN, MAX_POS = 16, 2, 32, 64
SHARED, DEC = 2, 1  # 2 shared encoder layers, 1 decoder layer (and 1 understanding-decoder layer)
BERT_VOCAB = (
    ["[PAD]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    + list("的一是在不了有和人这中大为上个国我以要他")
    + ["the", "##s", "new", "a"]
)
ENGLISH_BART_VOCAB = ["<s>", "<pad>", "</s>", "<unk>"] + [f"w{i}" for i in range(30)] + ["<mask>"]


def randomize(module, seed):
    """Every parameter random (norm gains around 1), so a mis-mapped tensor shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            is_gain = name.lower().replace("_", "").endswith(
                ("layernorm.weight", "layernormembedding.weight")
            ) or name.endswith("layer_norm.weight")
            p.copy_(torch.randn(p.shape, generator=gen) * (0.1 if is_gain else 0.3) + (1.0 if is_gain else 0.0))
    return module.eval()


def cpt_reference(seed=0, symbols=BERT_VOCAB, decoder_layers=DEC, **decoder_options):
    """A tiny random CPT: BERT and a BART decoder (``decoder_options``: BartConfig
    options such as activation_function) sharing one word-embedding parameter. As in
    CPT, the understanding decoder (BERT's top layers) is as deep as the generation decoder."""
    vocab = len(symbols)
    bert = randomize(
        BertModel(
            BertConfig(
                vocab_size=vocab,
                hidden_size=DIM,
                num_hidden_layers=SHARED + decoder_layers,
                num_attention_heads=HEADS,
                intermediate_size=FFN,
                max_position_embeddings=MAX_POS,
                hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0,
            ),
            add_pooling_layer=False,
        ),
        seed,
    )
    decoder = randomize(
        BartDecoder(
            BartConfig(
                vocab_size=vocab,
                d_model=DIM,
                decoder_layers=decoder_layers,
                decoder_attention_heads=HEADS,
                decoder_ffn_dim=FFN,
                max_position_embeddings=MAX_POS,
                dropout=0.0,
                attention_dropout=0.0,
                activation_dropout=0.0,
                pad_token_id=0,
                **{"scale_embedding": False, **decoder_options},
            )
        ),
        seed + 1,
    )
    decoder.embed_tokens.weight = bert.embeddings.word_embeddings.weight
    return bert, decoder


def cpt_logits(bert, decoder, input_ids, attention_mask, decoder_input_ids):
    hidden = bert(
        input_ids=input_ids,
        attention_mask=attention_mask,
        token_type_ids=torch.ones_like(input_ids),
        output_hidden_states=True,
    ).hidden_states[-decoder.config.decoder_layers - 1]
    out = decoder(
        input_ids=decoder_input_ids, encoder_hidden_states=hidden, encoder_attention_mask=attention_mask
    ).last_hidden_state
    return hidden, out @ bert.embeddings.word_embeddings.weight.t()


def _cpt_module(bert, decoder):
    """CPT's module layout, so its state dict has the released key names and its
    word embeddings are one tensor under four of them, as in CPT's own model."""
    root, root.model = nn.Module(), nn.Module()
    root.model.encoder, root.model.decoder = bert, decoder
    root.model.shared = bert.embeddings.word_embeddings
    root.lm_head = nn.Linear(DIM, bert.config.vocab_size, bias=False)
    root.lm_head.weight = bert.embeddings.word_embeddings.weight
    root.register_buffer("final_logits_bias", torch.zeros(1, bert.config.vocab_size))
    return root


def save_weights(module, path, fmt):
    """``module``'s weights in ``path`` with every tied name stored ("bin": torch.save of
    the state dict; "safetensors": save_file of copies) or one only ("save_model")."""
    if fmt == "bin":
        torch.save(module.state_dict(), path / "pytorch_model.bin")
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(
            {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()},
            str(path / "model.safetensors"),
        )
    else:
        from safetensors.torch import save_model

        save_model(module, str(path / "model.safetensors"))


def save_cpt(bert, decoder, path, fmt="bin", symbols=BERT_VOCAB):
    """The weights under the released CPT key names, with config.json and vocab.txt."""
    path.mkdir()
    save_weights(_cpt_module(bert, decoder), path, fmt)
    config = {
        "architectures": ["CPTForConditionalGeneration"],
        "model_type": "cpt",
        "vocab_size": len(symbols),
        "d_model": DIM,
        "encoder_layers": bert.config.num_hidden_layers,
        "decoder_layers": decoder.config.decoder_layers,
        "encoder_attention_heads": HEADS,
        "decoder_attention_heads": HEADS,
        "encoder_ffn_dim": FFN,
        "decoder_ffn_dim": FFN,
        "max_position_embeddings": MAX_POS,
        "activation_function": decoder.config.activation_function,
        "scale_embedding": decoder.config.scale_embedding,
    }
    (path / "config.json").write_text(json.dumps(config))
    (path / "vocab.txt").write_text("".join(s + "\n" for s in symbols), encoding="utf-8")
    return path


def bart_reference(path, seed=0, chinese=False, fmt=None, **options):
    """A tiny transformers BART saved in ``path``: English (vocab.json, fairseq layout) or
    Chinese (fnlp/bart-*-chinese style: BERT vocab.txt, [PAD] 0, decoding from [SEP]).

    fmt None keeps save_pretrained's weights (model.shared.weight only of the tied
    names), else save_weights' format; ``options`` are BartConfig options.
    """
    vocab = BERT_VOCAB if chinese else ENGLISH_BART_VOCAB
    pad, bos, eos = (vocab.index("[PAD]"), vocab.index("[CLS]"), vocab.index("[SEP]")) if chinese else (1, 0, 2)
    config = dict(
        vocab_size=len(vocab),
        d_model=DIM,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS,
        encoder_ffn_dim=FFN,
        decoder_ffn_dim=FFN,
        max_position_embeddings=MAX_POS,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=pad,
        bos_token_id=bos,
        eos_token_id=eos,
        decoder_start_token_id=eos,
        forced_bos_token_id=None,
        forced_eos_token_id=None,
    )
    model = randomize(BartForConditionalGeneration(BartConfig(**{**config, **options})), seed)
    with torch.no_grad():
        model.final_logits_bias.zero_()
    model.save_pretrained(str(path))
    if fmt is not None:
        (path / "model.safetensors").unlink()
        save_weights(model, path, fmt)
    if chinese:
        (path / "vocab.txt").write_text("".join(s + "\n" for s in vocab), encoding="utf-8")
    else:
        (path / "vocab.json").write_text(json.dumps({s: i for i, s in enumerate(vocab)}))
    return model, path, vocab
