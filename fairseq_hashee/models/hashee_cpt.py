"""HashEE CPT: CPT's generation path (Shao et al. 2021) with hash-based early exiting.

CPT is a deep BERT-style encoder shared by two heads; for generation a shallow
BART-style decoder cross-attends to that encoder's output (the understanding
decoder stacked on the encoder is not used and not built here). In fairseq
terms the generation path is BART with another source embedding:

- the encoder adds word, absolute position and token-type embeddings (CPT feeds
  token type 1 to every position) and normalizes them, then runs post-LN
  layers with GELU whatever the config's activation (CPT builds its BERT
  without one); BERT's layer norms use eps 1e-12;
- the decoder is BART's, sharing the word embeddings; ``--activation-fn`` and
  ``--scale-embedding`` reach it alone.

So the model subclasses HashEE BART and replaces only the encoder's embedding.
``scripts/convert_hf_checkpoint.py`` turns a released Hugging Face CPT
checkpoint into this model's parameters (fairseq names).
"""

import copy

from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import TransformerConfig
from torch import nn

from .hashee_bart import HashEEBARTModel, hashee_bart_large_architecture
from .hashee_transformer import HashEEEncoder

BERT_LAYER_NORM_EPS = 1e-12
BERT_ACTIVATION = "gelu"
# CPT calls its BERT encoder with token_type_ids = 1 everywhere.
CPT_TOKEN_TYPE = 1
BERT_TOKEN_TYPES = 2


class HashEECPTEncoder(HashEEEncoder):
    """HashEE encoder with BERT's embedding (word + position + token type, normalized)."""

    def __init__(self, cfg, dictionary, embed_tokens, exit_impl: str = "skip"):
        super().__init__(cfg, dictionary, embed_tokens, exit_impl)
        self.embed_token_types = nn.Embedding(BERT_TOKEN_TYPES, cfg.encoder.embed_dim)
        nn.init.normal_(self.embed_token_types.weight, mean=0, std=cfg.encoder.embed_dim**-0.5)
        for module in self.modules():
            if isinstance(module, nn.LayerNorm):
                module.eps = BERT_LAYER_NORM_EPS

    def forward_embedding(self, src_tokens, token_embedding=None):
        # fairseq left-pads sources; its learned positions count non-pad tokens
        # from padding_idx + 1, which the converter maps onto BERT's row 0.
        if token_embedding is None:
            token_embedding = self.embed_tokens(src_tokens)
        x = token_embedding + self.embed_positions(src_tokens) + self.embed_token_types.weight[CPT_TOKEN_TYPE]
        x = self.dropout_module(self.layernorm_embedding(x))
        return x, token_embedding


@register_model("hashee_cpt")
class HashEECPTModel(HashEEBARTModel):
    @classmethod
    def build_encoder(cls, args, src_dict, embed_tokens):
        # A copy: fairseq hands the encoder and the decoder one config object.
        cfg = copy.copy(TransformerConfig.from_namespace(args))
        cfg.activation_fn = BERT_ACTIVATION
        return HashEECPTEncoder(cfg, src_dict, embed_tokens, args.exit_impl)


def _cpt_defaults(args, layers: int, decoder_layers: int, dim: int, heads: int):
    args.encoder_layers = getattr(args, "encoder_layers", layers)
    args.decoder_layers = getattr(args, "decoder_layers", decoder_layers)
    args.encoder_embed_dim = getattr(args, "encoder_embed_dim", dim)
    args.encoder_ffn_embed_dim = getattr(args, "encoder_ffn_embed_dim", 4 * dim)
    args.encoder_attention_heads = getattr(args, "encoder_attention_heads", heads)
    args.decoder_attention_heads = getattr(args, "decoder_attention_heads", heads)
    args.max_source_positions = getattr(args, "max_source_positions", 512)
    args.max_target_positions = getattr(args, "max_target_positions", 512)
    args.activation_dropout = getattr(args, "activation_dropout", 0.1)
    # Everything else (post-LN, learned positions, normalized embeddings, shared
    # and unscaled embeddings, GELU) is BART's, and the decoder takes the encoder's sizes.
    hashee_bart_large_architecture(args)


@register_model_architecture("hashee_cpt", "hashee_cpt_base")
def hashee_cpt_base_architecture(args):
    """fnlp/cpt-base's generation path: 10 encoder + 2 decoder layers, d=768."""
    _cpt_defaults(args, layers=10, decoder_layers=2, dim=768, heads=12)


@register_model_architecture("hashee_cpt", "hashee_cpt_large")
def hashee_cpt_large_architecture(args):
    """fnlp/cpt-large's generation path: 20 encoder + 4 decoder layers, d=1024."""
    _cpt_defaults(args, layers=20, decoder_layers=4, dim=1024, heads=16)
