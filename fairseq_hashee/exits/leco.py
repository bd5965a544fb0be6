"""LECO's exiting side (Zhang et al., ACL SRW 2023): a rule that compares successive exits.

LECO pairs searched exit heads (heads.py, ``--exit-heads search/searched``)
with COBEE, a comparison-based exiting mechanism. COBEE's exact definition
could not be read (only the paper's abstract was available to us: "a
simple-yet-effective comparison-based early exiting mechanism"), so this is
NOT COBEE but a comparison of successive exits we can document: PABEE's
patience counter (Zhou et al. 2020) with a confidence gate of ours:

    pred_i = argmax p_i,  conf_i = max p_i,
    run_i  = run_{i-1} + 1 if pred_i == pred_{i-1} else 0     (run_1 = 0)
    exit at the first layer i >= --exit-min-layer with  run_i >= patience  and  conf_i >= threshold

i.e. the last ``patience + 1`` heads agree on the next token and the current
one is confident. ``patience`` is ``--exit-patience`` (default 1),
``threshold`` ``--exit-threshold`` (default 0: agreement alone, PABEE's
rule; PCEE-BERT's patience counts layers whose normalised entropy is low, a
different rule); both are task options, set when generating. The rule reads every
layer's head below the top (its history must be complete, so also below
``--exit-min-layer``), and pays for it: a head per position and layer; a
position that exits outputs the logits its last head computed to decide.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import HashEEError
from .rules import ExitRule, PositionMemory, exit_here, kept_head_logits


class AgreementRule(ExitRule):
    name = "agreement"
    default_threshold = 0.0

    def __init__(self, num_layers: int, patience: int = 1):
        super().__init__()
        self.num_layers = num_layers
        self.patience = 0
        self.set_patience(min(patience, max(num_layers - 2, 0)))

    def set_patience(self, patience: int) -> None:
        # At layer i < L at most i - 1 earlier heads can agree.
        top = self.num_layers - 2
        if not isinstance(patience, int) or not 0 <= patience <= top:
            raise HashEEError(
                f"--exit-patience: expected an integer in 0..{top} (the agreeing heads below a decoder layer "
                f"under the top of {self.num_layers}), got {patience!r}"
            )
        self.patience = patience

    def decides_at(self, layer: int) -> bool:
        return True  # every layer's prediction enters the comparison

    def predictions(self, decoder, layer: int, h: Tensor, memory=None):
        """Confidence and prediction (N,) of the layer's head; the logits are kept in ``memory``
        (when given): a position that exits here outputs them."""
        probs = F.softmax(kept_head_logits(decoder, layer, h, memory).float(), dim=-1)
        return probs.max(dim=-1)

    def score(self, decoder, layer: int, h: Tensor, h_prev: Tensor) -> Tensor:
        return self.predictions(decoder, layer, h)[0]

    def decide(self, decoder, layer: int, h: Tensor, h_prev: Tensor, current: Tensor, memory=None) -> Tensor:
        if memory is None:
            raise HashEEError("the agreement exit rule compares layers: it needs the forward's PositionMemory")
        confidence, prediction = self.predictions(decoder, layer, h, memory)
        run = torch.where(prediction == memory.read("prediction", -1), memory.read("run", -1) + 1, 0)
        memory.write("prediction", prediction)
        memory.write("run", run)
        fires = (run >= self.patience) & (confidence >= self.threshold) & (layer >= self.min_layer)
        return exit_here(fires, layer, current)

    def decision_flops(self, decoder, layer: int) -> float:
        return decoder.exit_heads.flops_per_position(layer, decoder.shape.vocab)


__all__ = ["AgreementRule", "PositionMemory"]
