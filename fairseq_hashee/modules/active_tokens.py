"""Which positions a layer updates, as index tensors for gather/scatter.

This is the one place that turns exit layers into the work a layer does
(DESIGN.md section 1): layer ``i`` updates position ``t`` iff
``exit[t] >= i``. Pad positions carry exit 0 and are never updated.

A layer's plan is one of three: ``SKIP`` (no position is active: the layer
does no work at all), ``EVERY`` (no position has exited yet: the stock fairseq
layer runs, with no gather/scatter cost), or an ``ActiveTokens`` selection.
"""

import enum
from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor


class ActiveTokens(NamedTuple):
    """The positions one layer updates, in row-major (batch row, then time) order.

    Attention needs the active queries of a row side by side, so each active
    position also gets a compact row index and a slot within its row; the
    packed query tensor is ``(len(row_ids), n_slots, ...)``.
    """

    flat: Tensor  # (N,) index into the time-major states flattened to (T*B, C)
    rows: Tensor  # (N,) index into row_ids
    slots: Tensor  # (N,) slot of the position among its row's active positions
    times: Tensor  # (N,) time index of the position within the given chunk
    row_ids: Tensor  # (Ba,) batch rows with at least one active position
    n_slots: int  # the largest number of active positions in one row
    num_rows: int  # B, the batch size the indices refer to

    @property
    def all_rows(self) -> bool:
        return self.row_ids.numel() == self.num_rows


class Plan(enum.Enum):
    SKIP = "no position is active"
    EVERY = "every non-pad position is active"


LayerPlan = Union[Plan, ActiveTokens]


class LayerPlanner:
    """Plans every layer of one forward over time-major ``exits`` (T, B).

    The count of live (non-pad) positions is the same for every layer, so it
    is taken once per forward rather than once per layer, and only when a
    layer is planned: stacks without early exits never ask.
    """

    def __init__(self, exits: Tensor):
        self.exits = exits
        self._live: Optional[Tensor] = None

    def __call__(self, layer: int) -> LayerPlan:
        """What ``layer`` (1-based) does with the positions."""
        if self._live is None:
            self._live = (self.exits > 0).sum()
        return _plan(self.exits, layer, self._live)


def _plan(exits: Tensor, layer: int, live: Tensor) -> LayerPlan:
    active = exits.t() >= layer  # (B, T)
    if active.numel() == 0:
        return Plan.SKIP
    per_row = active.sum(dim=1)
    # One read of two numbers: the only host synchronisation of the plan.
    n_slots, n_frozen = torch.stack([per_row.max(), live - per_row.sum()]).tolist()
    if n_slots == 0:
        return Plan.SKIP
    if n_frozen == 0:
        return Plan.EVERY
    num_rows = active.size(0)
    b, t = active.nonzero(as_tuple=True)
    has_active = per_row > 0
    row_rank = torch.cumsum(has_active, dim=0) - 1
    slot_of = torch.cumsum(active, dim=1) - 1
    return ActiveTokens(
        flat=t * num_rows + b,
        rows=row_rank[b],
        slots=slot_of[b, t],
        times=t,
        row_ids=has_active.nonzero().squeeze(1),
        n_slots=n_slots,
        num_rows=num_rows,
    )
