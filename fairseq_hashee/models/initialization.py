"""Initialising a model that is trained from scratch rather than restored.

BART initialises every weight from N(0, 0.02) (``init_bert_params``), which suits
its pretraining at width 768-1024. At the widths one trains from scratch on a CPU
(the built-in corpus's d = 128) the token and position embeddings and every
projection come out several times smaller than fairseq's Transformer makes them,
and measured on that corpus the decoder then learns to ignore the encoder: after
400 updates the validation loss with every source swapped for another example's
equals the loss with the right one (to 1e-6), while fairseq's Transformer
initialisation on the same architecture already gains 0.24 nats per token from the
source. ``--weight-init transformer`` gives a HashEE model that initialisation;
restored checkpoints overwrite it either way.
"""

from fairseq.modules import MultiheadAttention
from torch import nn

WEIGHT_INITS = ("bart", "transformer")


def _normal_embedding(embedding: nn.Embedding) -> None:
    nn.init.normal_(embedding.weight, mean=0.0, std=embedding.embedding_dim**-0.5)
    if embedding.padding_idx is not None:
        nn.init.zeros_(embedding.weight[embedding.padding_idx])


def transformer_init(model) -> None:
    """fairseq Transformer's initialisation for the layers and embeddings of ``model``'s stacks:
    xavier-uniform projections (attention's own scaled variant), zero biases, N(0, d^-1/2) embeddings."""
    for stack in (model.encoder, model.decoder):
        _normal_embedding(stack.embed_tokens)
        if isinstance(stack.embed_positions, nn.Embedding):  # learned positions (BART's)
            _normal_embedding(stack.embed_positions)
        for layer in stack.layers:
            for module in layer.modules():
                if isinstance(module, MultiheadAttention):
                    module.reset_parameters()
            for linear in (layer.fc1, layer.fc2):
                nn.init.xavier_uniform_(linear.weight)
                nn.init.zeros_(linear.bias)
