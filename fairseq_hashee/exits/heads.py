"""Next-token distributions at every decoder layer (docs/design.md section 7).

Layer ``i``'s logits are ``W · norm(h_i)``: ``norm`` is the decoder's final
layer norm (none in post-LN BART, whose layer outputs are normalised
already), and ``W`` is the model's own output projection (shared, CALM's
default) or, with ``--exit-heads per-layer``, a head of the layer's own,
initialised from the output projection. The top layer always uses the output
projection, so a model whose positions all exit at ``L`` computes what the
model without heads computes.

LECO (Zhang et al. 2023) searches each layer's head architecture among a few
candidates (``HEAD_ARCHS``) with differentiable architecture search:

- ``shared``: the output projection itself;
- ``linear``: a vocabulary-sized projection of the layer's own (``per-layer``'s head);
- ``mlp``: a one-hidden-layer residual MLP on the state, ``x + W2 gelu(W1 x)``
  (``W2`` starts at zero), then the output projection;
- ``pooler``: BERT's pooler as multi-exit BERT heads use it, ``tanh(W x + b)``
  (``W`` starts at the identity), then the output projection.

The transforms feed the shared projection, so only ``linear`` adds a
vocabulary-sized matrix. ``--exit-heads search`` holds every candidate at
every layer below the top and architecture weights ``alpha`` (L-1 x 4); a
layer's logits are the softmax(alpha)-weighted sum of its candidates' logits
(trained by ``--criterion leco_head_search``). ``--exit-heads searched`` keeps
one candidate per layer, ``argmax alpha`` of the search it is restored from,
in the buffer ``choice``: a checkpoint carries its architectures, and the
model that loads it keeps the chosen modules only (``select``).
"""

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import HashEEError
from ..modules import flops
from ..modules.few_rows_linear import few_rows_linear

HEAD_KINDS = ("shared", "per-layer", "search", "searched")
HEAD_ARCHS = ("shared", "linear", "mlp", "pooler")  # the search space; ``choice`` indexes it
UNCHOSEN = -1


class _MLPHead(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)
        self.init_weights()

    def init_weights(self) -> None:
        with torch.no_grad():
            self.fc2.weight.zero_()
            self.fc2.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc2(F.gelu(self.fc1(x)))


class _PoolerHead(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.init_weights()

    def init_weights(self) -> None:
        with torch.no_grad():
            self.dense.weight.copy_(torch.eye(self.dense.in_features))
            self.dense.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.dense(x))


def _build_candidate(arch: str, dim: int, output_projection: nn.Linear) -> Optional[nn.Module]:
    if arch == "shared":
        return None
    if arch == "linear":
        head = nn.Linear(dim, output_projection.out_features, bias=False)
        with torch.no_grad():
            head.weight.copy_(output_projection.weight)
        return head
    if arch == "mlp":
        return _MLPHead(dim)
    if arch == "pooler":
        return _PoolerHead(dim)
    raise HashEEError(f"exit head architecture: expected one of {', '.join(HEAD_ARCHS)}, got {arch!r}")


class ExitHeads(nn.Module):
    def __init__(self, num_layers: int, embed_dim: int, output_projection: nn.Linear, kind: str = "shared"):
        super().__init__()
        if kind not in HEAD_KINDS:
            raise HashEEError(f"--exit-heads: expected one of {', '.join(HEAD_KINDS)}, got {kind!r}")
        self.num_layers = num_layers
        self.embed_dim = embed_dim
        self.kind = kind
        self.layers: Optional[nn.ModuleList] = None
        self.candidates: Optional[nn.ModuleList] = None
        if kind == "per-layer":
            self.layers = nn.ModuleList(
                _build_candidate("linear", embed_dim, output_projection) for _ in range(num_layers - 1)
            )
        if kind in ("search", "searched"):
            # Every candidate of every layer below the top; ``select`` keeps the chosen ones.
            self.candidates = nn.ModuleList(
                nn.ModuleDict({arch: _build_candidate(arch, embed_dim, output_projection) for arch in HEAD_ARCHS[1:]})
                for _ in range(num_layers - 1)
            )
            self.register_buffer("choice", torch.full((num_layers - 1,), UNCHOSEN, dtype=torch.long))
        if kind == "search":
            # Updated by the search criterion's own optimizer, never by fairseq's: its gradient is neither
            # clipped with the network's (--clip-norm) nor given the network's learning rate or decay.
            self.alpha = nn.Parameter(torch.zeros(num_layers - 1, len(HEAD_ARCHS)), requires_grad=False)

    def init_candidates(self, output_projection: nn.Linear) -> None:
        """The candidates' starting weights (``linear``: the output projection; ``mlp``: the identity
        map; ``pooler``: tanh of the identity), again after a model-wide initialisation such as BART's."""
        for modules in self.candidates or []:
            for arch, module in modules.items():
                if arch == "linear":
                    with torch.no_grad():
                        module.weight.copy_(output_projection.weight)
                else:
                    module.init_weights()

    # -- the search's outcome -------------------------------------------------------------

    # The buffer ``choice`` read once (it lives on the model's device: reading it at every head
    # would synchronise with the host once per layer and step); ``select`` and loading reset it.
    _chosen: Optional[List[str]] = None

    def chosen_archs(self) -> List[str]:
        """The architecture of every layer below the top (searched heads)."""
        if self._chosen is None:
            choice = self.choice.tolist()
            if any(c == UNCHOSEN for c in choice):
                raise HashEEError(
                    "--exit-heads searched: the model has no chosen exit heads; restore a search's checkpoint "
                    "(--exit-heads search --criterion leco_head_search) with --restore-file"
                )
            self._chosen = [HEAD_ARCHS[c] for c in choice]
        return self._chosen

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._chosen = None
        # A scale of alpha that searches saved before alpha had an optimizer of its own.
        state_dict.pop(f"{prefix}alpha_scale", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def select(self, choice: Sequence[int]) -> None:
        """Keep, at each layer below the top, the candidate ``choice`` names (indices into HEAD_ARCHS)."""
        choice = [int(c) for c in choice]
        if len(choice) != self.num_layers - 1 or not all(0 <= c < len(HEAD_ARCHS) for c in choice):
            raise HashEEError(
                f"exit heads: the checkpoint's decoder.exit_heads.choice {choice} does not fit a decoder of "
                f"{self.num_layers} layers and the candidates {', '.join(HEAD_ARCHS)} (one index per layer below "
                "the top)"
            )
        for layer, index in enumerate(choice):
            modules = self.candidates[layer]
            if HEAD_ARCHS[index] != "shared" and HEAD_ARCHS[index] not in modules:
                kept = [HEAD_ARCHS[c] for c in self.choice.tolist()]
                raise HashEEError(
                    f"exit heads: the checkpoint's chosen heads {[HEAD_ARCHS[c] for c in choice]} do not match "
                    f"the model's, already chosen as {kept}"
                )
            for arch in list(modules.keys()):
                if arch != HEAD_ARCHS[index]:
                    del modules[arch]
        self.choice.copy_(torch.tensor(choice, dtype=torch.long))
        self._chosen = None

    # -- logits ----------------------------------------------------------------------------

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

    def _arch_logits(self, decoder, layer: int, arch: str, features: Tensor) -> Tensor:
        if arch == "shared":
            return few_rows_linear(decoder.output_projection, features)
        module = self.candidates[layer - 1][arch]
        if arch == "linear":
            return few_rows_linear(module, features)
        return few_rows_linear(decoder.output_projection, module(features))

    def candidate_logits(self, decoder, layer: int, features: Tensor) -> List[Tensor]:
        """Every candidate's logits at ``layer`` (search), in HEAD_ARCHS order."""
        return [self._arch_logits(decoder, layer, arch, features) for arch in HEAD_ARCHS]

    def mixture_weights(self, layer: int, alpha: Optional[Tensor] = None) -> Tensor:
        """softmax(alpha) of layer ``layer``, from ``alpha`` (L-1 x 4) when given (the search's copy
        that takes gradients), else the model's."""
        return F.softmax((self.alpha if alpha is None else alpha)[layer - 1].float(), dim=-1)

    def search_logits(
        self, decoder, layer: int, features: Tensor, alpha: Optional[Tensor] = None
    ) -> Tuple[Tensor, Tensor]:
        """The search's two views of layer ``layer``'s mixed logits (first-order DARTS): with alpha
        held fixed (what the network's weights learn from) and with the candidates held fixed (what
        alpha, or the ``alpha`` given, learns from)."""
        candidates = self.candidate_logits(decoder, layer, features)
        weights = self.mixture_weights(layer, alpha).to(features.dtype)
        fixed_alpha = sum(w * logits for w, logits in zip(weights.detach(), candidates))
        fixed_net = sum(w * logits.detach() for w, logits in zip(weights, candidates))
        return fixed_alpha, fixed_net

    def head_logits(self, decoder, layer: int, features: Tensor) -> Tensor:
        """Layer ``layer``'s logits for normalised ``features`` (..., C)."""
        if self.candidates is None or layer == self.num_layers:
            return few_rows_linear(self.projection(decoder, layer), features)
        if self.kind == "search":
            weights = self.mixture_weights(layer).to(features.dtype)
            return sum(w * logits for w, logits in zip(weights, self.candidate_logits(decoder, layer, features)))
        return self._arch_logits(decoder, layer, self.chosen_archs()[layer - 1], features)

    def logits(self, decoder, layer: int, h: Tensor) -> Tensor:
        """Layer ``layer``'s next-token logits for states ``h`` (..., C)."""
        return self.head_logits(decoder, layer, self.features(decoder, h))

    def output(self, decoder, features: Tensor, exits: Tensor, known=None) -> Tensor:
        """The model's logits (B, T, V) for decoder ``features`` (B, T, C) (normalised
        already): each position's from the head of its exit layer ``exits`` (B, T).

        ``known``: logits (B, T, V) holding, where the mask (B, T) says, the exit
        layer's logits a rule computed already to decide (``PositionMemory.exit_logits``);
        the other positions' are computed into them (one host read: how many)."""
        if known is None:
            return self._output_rows(decoder, features, exits)
        logits, known_mask = known
        computed = ~known_mask
        logits[computed] = self._output_rows(decoder, features[computed], exits[computed]).to(logits.dtype)
        return logits

    def _output_rows(self, decoder, features: Tensor, exits: Tensor) -> Tensor:
        """Logits (..., V) of ``features`` (..., C) from the heads of their ``exits`` (...).

        With heads other than the shared projection this groups positions by exit
        layer: one host read (how many positions exited at each layer)."""
        if self.layers is None and self.candidates is None:
            return few_rows_linear(decoder.output_projection, features)
        top = decoder.output_projection
        logits = features.new_empty(features.shape[:-1] + (top.out_features,))
        at_top = (exits == 0) | (exits == self.num_layers)  # padding takes the top projection too
        logits[at_top] = few_rows_linear(top, features[at_top])
        counts = torch.bincount(exits.flatten().clamp(0, self.num_layers), minlength=self.num_layers + 1).tolist()
        for layer in range(1, self.num_layers):
            if counts[layer]:
                at_layer = exits == layer
                logits[at_layer] = self.head_logits(decoder, layer, features[at_layer])
        return logits

    # -- FLOPs -----------------------------------------------------------------------------

    def flops_per_position(self, layer: int, vocab: int) -> float:
        """Matrix-product FLOPs of one position's logits at ``layer``."""
        dim = self.embed_dim
        if self.candidates is None or layer == self.num_layers:
            return flops.linear(dim, vocab)
        if self.kind == "search":
            return sum(flops.exit_head(arch, dim, vocab) for arch in HEAD_ARCHS)
        return flops.exit_head(self.chosen_archs()[layer - 1], dim, vocab)

    def output_extra_flops(self, exits: Tensor, vocab: int, known: Optional[Tensor] = None) -> float:
        """What the heads of positions exited at ``exits`` (B, T) cost beyond the output
        projection every position is counted with: more for searched heads, nothing at all
        where a rule's logits are the output (``known``, B x T: their head is counted as the
        rule's decision). One host read per term."""
        extra = 0.0
        if self.candidates is not None:
            counts = torch.bincount(exits.flatten().clamp(min=0), minlength=self.num_layers + 1).tolist()
            base = flops.linear(self.embed_dim, vocab)
            extra += sum(
                counts[layer] * (self.flops_per_position(layer, vocab) - base) for layer in range(1, self.num_layers)
            )
        if known is not None:
            reused = torch.bincount(exits[known].clamp(min=0), minlength=self.num_layers + 1).tolist()
            extra -= sum(reused[layer] * self.flops_per_position(layer, vocab) for layer in range(1, self.num_layers))
        return extra
