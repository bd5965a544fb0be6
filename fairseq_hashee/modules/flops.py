"""FLOPs of a HashEE stack, spent and full, counted the way the paper reports them.

A multiply-add is 2 FLOPs; norms, softmax and embeddings are left out. Per
layer, a position the layer updates costs its query and output projections,
its attention scores and weighted sum, and the feed-forward block; every
position, updated or frozen, costs its key/value projections (docs/design.md
section 5). The decoder also counts the cross-attention key/value projections
of the source (once per sentence when decoding incrementally) and the output
projection of every position. Speed-up = FLOPs with every exit at L divided by
FLOPs spent.

Every FLOPs figure of the project is computed here: the stacks' (``encoder_flops``,
``decoder_flops``, per call through ``SpeedupMeter``, which the model and
``hashee-table`` feed alike), and the pieces exit rules and heads are made of
(``linear``, ``exit_head``), which their ``decision_flops`` and
``flops_per_position`` assemble.

The meter's sums are keyed ``{stack}_{quantity}`` (``METER_KEYS``): the task
logs them through fairseq's metrics under these names and derives the
report from their totals.
"""

import contextlib
import re
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Dict, Iterator, Optional

import torch
from torch import Tensor

STACKS = ("encoder", "decoder")
# calls: forwards of the stack (the decoder's, in generation, are beam search's steps of a batch)
QUANTITIES = ("flops_spent", "flops_full", "exit_sum", "positions", "calls")
METER_KEYS = tuple(f"{stack}_{quantity}" for stack in STACKS for quantity in QUANTITIES)


def _key(stack: str, quantity: str) -> str:
    return f"{stack}_{quantity}"


@dataclass(frozen=True)
class StackShape:
    layers: int
    embed_dim: int
    ffn_dim: int
    full_layers: int = 0  # depth of the full model (of a truncated stack's source); 0: ``layers``
    kv_input_dim: int = 0  # decoder: dimension of the encoder output
    vocab: int = 0  # decoder: size of the output projection

    def full(self) -> "StackShape":
        """The shape of the full model, whose FLOPs are the speed-up's numerator."""
        return replace(self, layers=self.full_layers or self.layers)


def linear(in_features: int, out_features: int) -> float:
    """Matrix-product FLOPs of one row through a ``Linear(in_features, out_features)``."""
    return 2.0 * in_features * out_features


# Per exit-head architecture (exits/heads.py, HEAD_ARCHS): its (dim, dim) products before the
# vocabulary projection.
_HEAD_TRANSFORMS = {"shared": 0, "linear": 0, "mlp": 2, "pooler": 1}


def exit_head(arch: str, dim: int, vocab: int) -> float:
    """FLOPs of one position's logits through an exit head of architecture ``arch``."""
    return _HEAD_TRANSFORMS[arch] * linear(dim, dim) + linear(dim, vocab)


def _as_full(exits: Tensor, layers: int) -> Tensor:
    return torch.where(exits > 0, torch.full_like(exits, layers), exits)


def encoder_flops(shape: StackShape, exits: Tensor) -> float:
    """FLOPs of one encoder forward; ``exits`` (B, T) holds 0 at padding."""
    d, f, num_layers = shape.embed_dim, shape.ffn_dim, shape.layers
    exits = exits.double()
    lengths = (exits > 0).sum(dim=1, keepdim=True).double()  # (B, 1)
    kv = 4.0 * d * d * num_layers * lengths.sum()
    per_layer = 4.0 * d * d + 4.0 * d * f + 4.0 * d * lengths
    return float(kv + (exits * per_layer).sum())


def _decoder_layer(shape: StackShape, positions: Tensor, src_lengths: Tensor) -> Tensor:
    """One decoder layer's FLOPs for a position at 0-based ``positions`` reading ``src_lengths``
    source positions (broadcast together): self- and cross-attention query and output
    projections, FFN, scores and weighted sums (its keys and values are counted per position)."""
    d, f = shape.embed_dim, shape.ffn_dim
    return 8.0 * d * d + 4.0 * d * f + 4.0 * d * (positions.double() + 1.0) + 4.0 * d * src_lengths.double()


def synchronized_layers(exits: Tensor, num_layers: int) -> Tensor:
    """The layers each position (B, T) runs under a synchronized rule (FREE, docs/design.md
    section 8) that decided ``exits``: every layer, except the positions after a row's last one
    that went to the top, which no later position takes deep (their exit's)."""
    deep = exits == num_layers
    deep_later = deep.flip(1).cummax(dim=1).values.flip(1)  # some position at or after t goes deep
    return torch.where(deep_later & (exits > 0), torch.full_like(exits, num_layers), exits)


def flushed(shape: StackShape, shallow_layer: int, block, source_lengths: Optional[Tensor], num_rows: int) -> float:
    """The deep layers a synchronized step of ``num_rows`` rows ran for the positions its rows had
    left pending (``block``, modules/kv_cache.SynchronizedBlock; ``source_lengths`` as in
    ``SpeedupMeter.add_decoder``): the step's own position is counted with its exit."""
    computed = block.computed.clone()
    computed[-1] = False
    reads = torch.zeros_like(block.rows)
    if source_lengths is not None:
        reads = source_lengths.repeat_interleave(num_rows // source_lengths.size(0))[block.rows]
    per_layer = _decoder_layer(shape, block.positions[:, None], reads[None, :])
    return float((shape.layers - shallow_layer) * (per_layer * computed).sum())


def decoder_flops(
    shape: StackShape,
    exits: Tensor,
    positions: Tensor,
    src_lengths: Tensor,
    cross_kv_lengths: Optional[Tensor],
) -> float:
    """FLOPs of decoder positions ``exits`` (B, T) at absolute ``positions`` (B, T).

    ``src_lengths`` (B,) are the source lengths each row attends to;
    ``cross_kv_lengths`` are the source lengths whose cross-attention keys and
    values this call projects (None when they come from the cache).
    """
    d, num_layers = shape.embed_dim, shape.layers
    real = (exits > 0).double()
    per_layer = _decoder_layer(shape, positions, src_lengths[:, None])
    per_position = 4.0 * d * d * num_layers + 2.0 * d * shape.vocab
    total = (exits.double() * per_layer).sum() + per_position * real.sum()
    if cross_kv_lengths is not None:
        total = total + 4.0 * d * shape.kv_input_dim * num_layers * cross_kv_lengths.double().sum()
    return float(total)


class SpeedupMeter:
    """Running sums of FLOPs (spent and full) and exit layers, per stack."""

    def __init__(self):
        self.sums: Dict[str, float] = defaultdict(float)

    def add(self, stack: str, spent: float, full: float, exits: Tensor):
        real = exits > 0
        self.sums[_key(stack, "flops_spent")] += spent
        self.sums[_key(stack, "flops_full")] += full
        self.sums[_key(stack, "exit_sum")] += float(exits[real].double().sum())
        self.sums[_key(stack, "positions")] += float(real.sum())
        self.sums[_key(stack, "calls")] += 1

    def spent(self, stack: str) -> float:
        return self.sums[_key(stack, "flops_spent")]

    def add_encoder(self, shape: StackShape, exits: Tensor):
        full = shape.full()
        self.add("encoder", encoder_flops(shape, exits), encoder_flops(full, _as_full(exits, full.layers)), exits)

    def add_decoder(
        self,
        shape: StackShape,
        exits: Tensor,
        first_position: int,
        source_lengths: Optional[Tensor],
        extra_flops: float = 0.0,
        layers_run: Optional[Tensor] = None,
    ):
        """One decoder call over positions ``exits`` (B, T) from absolute position
        ``first_position`` on (an incremental step: T = 1).

        ``source_lengths`` (G,) are those of the cross-attention key rows (None: no
        cross-attention): B // G query rows read each (beamable attention: a sentence's
        hypotheses), and the call that starts at position 0 projects them (teacher-forced,
        every call; incrementally, the first step). ``extra_flops``: what exit rules and
        heads spent beyond the layers (spent, never in the full model). ``layers_run`` (B, T): the
        layers each position ran where that is not its exit (a synchronized rule's, section 8).
        """
        num_rows, length = exits.shape
        positions = first_position + torch.arange(length, device=exits.device).expand(num_rows, length)
        if source_lengths is None:
            read, projected = exits.new_zeros(num_rows), None
        else:
            read = source_lengths.repeat_interleave(num_rows // source_lengths.size(0))
            projected = source_lengths if first_position == 0 else None
        full = shape.full()
        ran = exits if layers_run is None else layers_run
        self.add(
            "decoder",
            decoder_flops(shape, ran, positions, read, projected) + extra_flops,
            decoder_flops(full, _as_full(exits, full.layers), positions, read, projected),
            exits,
        )


def speedup_report(sums: Dict[str, float]) -> Dict[str, float]:
    """Speed-ups and mean exit layers from (possibly aggregated) meter sums."""

    def ratio(num: float, den: float) -> float:
        return num / den if den else 0.0

    def total(quantity: str, stacks=STACKS) -> float:
        return sum(sums.get(_key(stack, quantity), 0.0) for stack in stacks)

    report = {}
    for stack in STACKS:
        short = stack[:3]
        report[f"{short}_speedup"] = ratio(total("flops_full", [stack]), total("flops_spent", [stack]))
        report[f"{short}_mean_exit"] = ratio(total("exit_sum", [stack]), total("positions", [stack]))
    report["total_speedup"] = ratio(total("flops_full"), total("flops_spent"))
    report["dec_calls"] = total("calls", ["decoder"])
    return report


REPORT_KEYS = ("enc_speedup", "dec_speedup", "total_speedup", "enc_mean_exit", "dec_mean_exit", "dec_calls")
_REPORT_LINE = re.compile(
    r"speed-up \(FLOPs\): encoder (\S+)x, decoder (\S+)x, total (\S+)x; mean exit layer: encoder (\S+), decoder "
    r"([^\s;]+)(?:; decoder calls (\d+))?"
)


def format_report(report: Dict[str, float]) -> str:
    return (
        f"speed-up (FLOPs): encoder {report['enc_speedup']:.2f}x, "
        f"decoder {report['dec_speedup']:.2f}x, total {report['total_speedup']:.2f}x; "
        f"mean exit layer: encoder {report['enc_mean_exit']:.2f}, decoder {report['dec_mean_exit']:.2f}"
        + (f"; decoder calls {report['dec_calls']:.0f}" if report.get("dec_calls") else "")
    )


def parse_report(text: str) -> Optional[Dict[str, float]]:
    """The figures of the first ``format_report`` line in ``text`` (e.g. a fairseq-generate log), or None."""
    found = _REPORT_LINE.search(text)
    if found is None:
        return None
    return {key: float(value) for key, value in zip(REPORT_KEYS, found.groups()) if value is not None}


@contextlib.contextmanager
def measuring(model) -> Iterator[SpeedupMeter]:
    """Count FLOPs of every HashEE stack in ``model`` while the block runs."""
    meter = SpeedupMeter()
    stacks = [m for m in model.modules() if hasattr(m, "speedup_meter")]
    for m in stacks:
        m.speedup_meter = meter
    try:
        yield meter
    finally:
        for m in stacks:
            m.speedup_meter = None
