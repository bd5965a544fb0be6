"""Next-token distributions at every decoder layer (docs/design.md section 7).

Layer ``i``'s logits are ``W · norm(h_i)``: ``norm`` is the decoder's final
layer norm (none in post-LN BART, whose layer outputs are normalised
already), and ``W`` is the model's own output projection (shared, CALM's
default) or, with ``--exit-heads per-layer``, a head of the layer's own,
initialised from the output projection. The top layer always uses the output
projection, so a model whose positions all exit at ``L`` computes what the
model without heads computes.
"""

from typing import Optional

import torch
from torch import Tensor, nn

from ..modules.few_rows_linear import few_rows_linear

HEAD_KINDS = ("shared", "per-layer")


class ExitHeads(nn.Module):
    def __init__(self, num_layers: int, embed_dim: int, output_projection: nn.Linear, kind: str = "shared"):
        super().__init__()
        self.num_layers = num_layers
        self.kind = kind
        self.layers: Optional[nn.ModuleList] = None
        if kind == "per-layer":
            self.layers = nn.ModuleList(
                nn.Linear(embed_dim, output_projection.out_features, bias=False) for _ in range(num_layers - 1)
            )
            with torch.no_grad():
                for head in self.layers:
                    head.weight.copy_(output_projection.weight)

    def projection(self, decoder, layer: int) -> nn.Module:
        if self.layers is None or layer == self.num_layers:
            return decoder.output_projection
        return self.layers[layer - 1]

    def features(self, decoder, h: Tensor) -> Tensor:
        """What a head reads from states ``h`` (..., C): the decoder's final norm and
        output-dimension projection, as its top layer gets them."""
        if decoder.layer_norm is not None:
            h = decoder.layer_norm(h)
        if decoder.project_out_dim is not None:
            h = decoder.project_out_dim(h)
        return h

    def logits(self, decoder, layer: int, h: Tensor) -> Tensor:
        """Layer ``layer``'s next-token logits for states ``h`` (..., C)."""
        return few_rows_linear(self.projection(decoder, layer), self.features(decoder, h))

    def output(self, decoder, features: Tensor, exits: Tensor) -> Tensor:
        """The model's logits (B, T, V) for decoder ``features`` (B, T, C) (normalised
        already): each position's from the head of its exit layer ``exits`` (B, T).

        With per-layer heads this groups positions by exit layer, one host read
        per layer that has a head."""
        top = decoder.output_projection
        if self.layers is None:
            return few_rows_linear(top, features)
        logits = features.new_empty(features.shape[:-1] + (top.out_features,))
        at_top = (exits == 0) | (exits == self.num_layers)  # padding takes the top projection too
        logits[at_top] = few_rows_linear(top, features[at_top])
        for layer, head in enumerate(self.layers, start=1):
            at_layer = exits == layer
            if bool(at_layer.any()):
                logits[at_layer] = few_rows_linear(head, features[at_layer])
        return logits
