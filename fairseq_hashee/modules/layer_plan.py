"""Layer plans: which positions each layer of a stack updates (docs/design.md section 3).

This is the one place that turns exit layers into the work a layer does:
layer ``i`` updates position ``t`` iff ``exits[b, t] >= i`` (section 1). Exits
are batch-major (B, T), like the tokens they come from, with 0 at padding.

A layer's plan is one of three:

- ``Plan.SKIP``: no position is active, the layer does no work at all;
- ``Plan.EVERY``: no live position has exited, fairseq's own layer runs with
  no gather/scatter cost;
- ``ActivePositions``: the subset of positions the layer updates, as the
  index tensors that gather and scatter them.

A stack asks its ``StackPlanner`` for each layer's plan. The planner reads
the counts of every layer at once, in the first layer's plan: one host
synchronisation per forward (per step when decoding incrementally), not one
per layer, so a GPU's launch queue stalls at most once. A dynamic exit rule
(exits/) changes the exits after a layer; the planner then reads again for
the layers above: one read per layer that decided.
"""

import enum
from typing import List, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor


class ActivePositions(NamedTuple):
    """The positions one layer updates, in row-major (batch row, then time) order.

    Attention needs the active queries of a row side by side, so each active
    position also has a compact rank among the rows that have queries and a
    slot within its row; packed queries are ``(len(rows), n_slots, ...)``.
    """

    flat: Tensor  # (N,) index into time-major states flattened to (T*B, C): t * B + b
    rank: Tensor  # (N,) index into ``rows``: which packed row the position goes to
    slot: Tensor  # (N,) slot of the position among its row's active positions
    time: Tensor  # (N,) time index of the position within this call's positions
    rows: Tensor  # (Ba,) batch rows with at least one active position, ascending
    n_slots: int  # the largest number of active positions in one row
    batch_size: int  # B, the number of rows the indices refer to

    @property
    def all_rows(self) -> bool:
        return self.rows.numel() == self.batch_size


class Plan(enum.Enum):
    SKIP = "no position is active"
    EVERY = "every live position is active"


LayerPlan = Union[Plan, ActivePositions]


class StackPlanner:
    """The plans of every layer of one stack forward over ``exits`` (B, T).

    With ``every_layer_full`` (no symbol of the table exits early) every plan
    is ``EVERY`` and nothing is ever read from the device.
    """

    def __init__(self, exits: Tensor, num_layers: int, every_layer_full: bool = False):
        self.exits = exits
        self.num_layers = num_layers
        self.every_layer_full = every_layer_full
        self._counts: Optional[List[List[int]]] = None

    def __call__(self, layer: int) -> LayerPlan:
        """What ``layer`` (1-based) does."""
        if self.every_layer_full:
            return Plan.EVERY
        if self._counts is None:
            self._counts = self._read_counts()
        n_active, n_rows, n_slots, n_live = (row[layer - 1] for row in self._counts)
        if n_active == 0:
            return Plan.SKIP
        if n_active == n_live:
            return Plan.EVERY
        return _active_positions(self.exits >= layer, n_active, n_rows, n_slots)

    def any_padding(self, padding: Tensor) -> bool:
        """Whether any position is padding (``padding``: True there): from the counts when
        the plans need them anyway, so a forward still reads from the device once."""
        if self.every_layer_full:
            return bool(padding.any())
        if self._counts is None:
            self._counts = self._read_counts()
        return self._counts[3][0] < self.exits.numel()

    def set_exits(self, exits: Tensor) -> None:
        """Exits changed by a rule after a layer: the layers above are planned anew."""
        self.exits = exits
        self._counts = None

    def active_indices(self, layer: int) -> Tuple[Tensor, Tensor]:
        """Batch and time indices (N,) of the positions ``layer`` updates, row-major."""
        if self._counts is None:
            self._counts = self._read_counts()
        n_active = self._counts[0][layer - 1]
        return torch.nonzero_static(self.exits >= layer, size=n_active).unbind(1)

    def active_mask(self, layer: int) -> Tensor:
        """(T, B, 1) True where ``layer`` updates the position: for the masked reference."""
        return (self.exits >= layer).t().unsqueeze(-1)

    def _read_counts(self) -> List[List[int]]:
        """Per layer: active positions, rows with one, most in a row, live positions.

        The only host read of the forward: every layer's plan needs these
        sizes (index tensors are sized by them), and all of them are known
        from the exits before the first layer runs.
        """
        layers = torch.arange(1, self.num_layers + 1, device=self.exits.device)
        per_row = (self.exits.unsqueeze(0) >= layers[:, None, None]).sum(dim=2)  # (L, B)
        live = (self.exits > 0).sum().expand(self.num_layers)
        counts = torch.stack([per_row.sum(dim=1), (per_row > 0).sum(dim=1), per_row.amax(dim=1), live])
        return counts.tolist()


def _active_positions(active: Tensor, n_active: int, n_rows: int, n_slots: int) -> ActivePositions:
    """Index tensors of the True entries of ``active`` (B, T), sized without a host read."""
    batch_size = active.size(0)
    b, t = torch.nonzero_static(active, size=n_active).unbind(1)
    has_active = active.any(dim=1)
    rows = torch.nonzero_static(has_active, size=n_rows).squeeze(1)
    rank = torch.cumsum(has_active, dim=0) - 1
    slot = torch.cumsum(active, dim=1) - 1
    return ActivePositions(
        flat=t * batch_size + b,
        rank=rank[b],
        slot=slot[b, t],
        time=t,
        rows=rows,
        n_slots=n_slots,
        batch_size=batch_size,
    )


def every_row(batch_size: int, device: torch.device) -> ActivePositions:
    """The plan of one incremental step (one position per row) in which every row is active."""
    rows = torch.arange(batch_size, device=device)
    zeros = torch.zeros_like(rows)
    return ActivePositions(flat=rows, rank=rows, slot=zeros, time=zeros, rows=rows, n_slots=1, batch_size=batch_size)


def grouped_by_source(plan: ActivePositions, num_sources: int) -> ActivePositions:
    """``plan`` with each sentence's hypotheses as slots of one row.

    fairseq's beamable cross-attention keeps one cache row per sentence; its
    hypotheses then query that row together, as stock BART's beamable
    attention does, instead of each taking a copy of it. Every sentence gets a
    row (those without an active hypothesis attend with empty queries): no
    host read to count them.
    """
    beam = plan.batch_size // num_sources
    row = plan.rows[plan.rank]
    return ActivePositions(
        flat=plan.flat,
        rank=torch.div(row, beam, rounding_mode="floor"),
        slot=(row % beam) * plan.n_slots + plan.slot,
        time=plan.time,
        rows=torch.arange(num_sources, device=row.device),
        n_slots=beam * plan.n_slots,
        batch_size=num_sources,
    )
