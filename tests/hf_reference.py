"""Tiny CPT and BART checkpoints built from transformers' own modules (test-only oracle).

CPT is put together the way its released code builds it: a BertModel whose top
DEC layers are the understanding decoder, and a BART decoder that shares the
word embeddings and cross-attends to the hidden state below those layers, with
token type 1 everywhere.
"""

import json

import torch
from transformers import BartConfig, BertConfig, BertModel
from transformers.models.bart.modeling_bart import BartDecoder

DIM, HEADS, FFN, MAX_POS = 16, 2, 32, 64
SHARED, DEC = 2, 1  # 2 shared encoder layers, 1 decoder layer (and 1 understanding-decoder layer)
BERT_VOCAB = ["[PAD]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("的一是在不了有和人这中大为上个国我以要他") + [
    "the", "##s", "new", "a"]


def randomize(module, seed):
    """Every parameter random (norm gains around 1), so a mis-mapped tensor shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            is_gain = name.lower().replace("_", "").endswith(("layernorm.weight", "layernormembedding.weight")) \
                or name.endswith("layer_norm.weight")
            p.copy_(torch.randn(p.shape, generator=gen) * (0.1 if is_gain else 0.3) + (1.0 if is_gain else 0.0))
    return module.eval()


def cpt_reference(seed=0, symbols=BERT_VOCAB):
    """A tiny random CPT from transformers' BertModel and BartDecoder, tied embeddings."""
    vocab = len(symbols)
    bert = randomize(BertModel(BertConfig(
        vocab_size=vocab, hidden_size=DIM, num_hidden_layers=SHARED + DEC, num_attention_heads=HEADS,
        intermediate_size=FFN, max_position_embeddings=MAX_POS, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0), add_pooling_layer=False), seed)
    decoder = randomize(BartDecoder(BartConfig(
        vocab_size=vocab, d_model=DIM, decoder_layers=DEC, decoder_attention_heads=HEADS, decoder_ffn_dim=FFN,
        max_position_embeddings=MAX_POS, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        scale_embedding=False, pad_token_id=0)), seed + 1)
    with torch.no_grad():
        decoder.embed_tokens.weight.copy_(bert.embeddings.word_embeddings.weight)
    return bert, decoder


def cpt_logits(bert, decoder, input_ids, attention_mask, decoder_input_ids):
    hidden = bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.ones_like(input_ids),
                  output_hidden_states=True).hidden_states[-DEC - 1]
    out = decoder(input_ids=decoder_input_ids, encoder_hidden_states=hidden,
                  encoder_attention_mask=attention_mask).last_hidden_state
    return hidden, out @ bert.embeddings.word_embeddings.weight.t()


def save_cpt(bert, decoder, path, fmt="bin", symbols=BERT_VOCAB):
    """The weights under the released CPT key names, with config.json and vocab.txt."""
    path.mkdir()
    state = {f"model.encoder.{k}": v for k, v in bert.state_dict().items()}
    state.update({f"model.decoder.{k}": v for k, v in decoder.state_dict().items()})
    state["model.shared.weight"] = bert.embeddings.word_embeddings.weight.detach()
    state["lm_head.weight"] = bert.embeddings.word_embeddings.weight.detach()
    state["final_logits_bias"] = torch.zeros(1, len(symbols))
    state = {k: v.detach().clone().contiguous() for k, v in state.items()}
    if fmt == "bin":
        torch.save(state, path / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        save_file(state, str(path / "model.safetensors"))
    config = {"architectures": ["CPTForConditionalGeneration"], "model_type": "cpt", "vocab_size": len(symbols),
              "d_model": DIM, "encoder_layers": SHARED + DEC, "decoder_layers": DEC,
              "encoder_attention_heads": HEADS, "decoder_attention_heads": HEADS, "encoder_ffn_dim": FFN,
              "decoder_ffn_dim": FFN, "max_position_embeddings": MAX_POS, "activation_function": "gelu",
              "scale_embedding": False}
    (path / "config.json").write_text(json.dumps(config))
    (path / "vocab.txt").write_text("".join(s + "\n" for s in symbols), encoding="utf-8")
    return path


