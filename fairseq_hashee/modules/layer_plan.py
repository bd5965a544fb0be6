"""Layer plans: which positions each layer of a stack updates (docs/design.md section 3).

This is the one place that turns exit layers into the work a layer does:
layer ``i`` updates position ``t`` iff ``exits[b, t] >= i`` (section 1). Exits
are batch-major (B, T), like the tokens they come from, with 0 at padding.

Exits are monotone: a position active at layer ``i`` was active at every layer
below. So once a stack orders each row's positions by exit layer, deepest
first (``ExitOrder``), every layer's active positions are the first ones of
each row: a layer works on a narrow view of the ordered states instead of
gathering them, and padding (exit 0) sorts last and is never computed. The
order is made once per forward and undone once at its end; an incremental
decoder step (one position per row) orders its rows instead (``RowOrder``).
On a GPU, where each operator costs a launch whatever its size, this keeps a
partly active layer as cheap to launch as a full one (docs/benchmark.md,
"Operators").

A layer's plan is one of:

- ``Plan.SKIP``: no position is active, the layer does no work at all;
- ``Plan.EVERY``: no position has exited and the stack kept its order:
  fairseq's own layer runs, exactly as in stock BART;
- ``Prefix``: the first ``size`` positions of each ordered row, and
  through a mask where some row has fewer active positions than that.

The planner reads the counts of every layer at once, before the first
layer: one host synchronisation per forward (per step when decoding
incrementally), not one per layer. A dynamic exit rule (exits/) changes
exits after a layer; the planner then reads and orders again for the layers
above: one read per layer that decided.
"""

import enum
from typing import List, NamedTuple, Optional, Union

import torch
from torch import Tensor


class Plan(enum.Enum):
    SKIP = "no position is active"
    EVERY = "every live position is active"


class Prefix(NamedTuple):
    """The first ``size`` ordered positions of each row (the first ``size`` ordered rows of an
    incremental step). ``write_mask`` (size, B, 1), True where the position is active, is None
    when every one of them is; ``attn_mask`` (B, 1, size, keys) says which keys a query sees
    (None: every key), for a teacher-forced forward."""

    size: int
    keys: int  # positions per row that serve as keys: the live ones of the longest row
    write_mask: Optional[Tensor] = None
    attn_mask: Optional[Tensor] = None


LayerPlan = Union[Plan, Prefix]


class Positions(NamedTuple):
    """Where a layer's N active positions are: in the states the layers see, (T, B, C) as
    ``states[state_time, state_row]``, and in the forward's own (B, T) layout."""

    state_time: Tensor
    state_row: Tensor
    row: Tensor
    time: Tensor


def _layers(num_layers: int, device) -> Tensor:
    return torch.arange(1, num_layers + 1, device=device)


class ExitOrder:
    """Each row's positions ordered by exit layer, deepest first (ties in time order).

    ``sort`` moves time-major states (T, B, C) into that order and ``unsort``
    back. Masks for attention in the new order come from ``order`` (the time
    index of each ordered position): the causal rule compares time indices,
    not slots.
    """

    def __init__(self, exits: Tensor, num_layers: int, causal: bool):
        self.exits, self.order = exits.sort(dim=1, descending=True, stable=True)
        self._index = self.order.t().unsqueeze(-1)  # (T, B, 1): gathers ordered slots from time
        self._active = self.exits.t().unsqueeze(-1) >= _layers(num_layers, exits.device)[:, None, None, None]
        self._causal = causal

    def sort(self, x: Tensor) -> Tensor:
        return x.gather(0, self._index.expand_as(x))

    def unsort(self, x: Tensor) -> Tensor:
        return torch.empty_like(x).scatter_(0, self._index.expand_as(x), x)

    def attention_mask(self, keys: int, padded: bool) -> Optional[Tensor]:
        """(B, 1, T, keys): which of the first ``keys`` ordered positions each ordered query sees."""
        mask = None
        if self._causal:
            mask = self.order[:, None, :keys] <= self.order[:, :, None]
        if padded:
            live = self.exits[:, None, :keys] > 0
            mask = live if mask is None else mask & live
        return None if mask is None else mask.unsqueeze(1)

    def write_mask(self, layer: int, size: int) -> Tensor:
        return self._active[layer - 1, :size]

    def positions(self, layer: int, num_active: int) -> Positions:
        rows, slots = torch.nonzero_static(self.exits >= layer, size=num_active).unbind(1)
        return Positions(slots, rows, rows, self.order[rows, slots])


class RowOrder:
    """One incremental step's rows (one position each) ordered by exit layer, deepest first.

    ``rows[j]`` is the row at ordered place ``j``; ``sort``/``unsort`` move states
    (1, B, C) into that order and back.
    """

    def __init__(self, exits: Tensor):
        _, self.rows = exits[:, 0].sort(descending=True, stable=True)
        self.places = _inverse(self.rows)  # places[r]: where row r is in the order

    def sort(self, x: Tensor) -> Tensor:
        return x.index_select(1, self.rows)

    def unsort(self, x: Tensor) -> Tensor:
        return x.index_select(1, self.places)

    def positions(self, layer: int, num_active: int) -> Positions:
        places = torch.arange(num_active, device=self.rows.device)
        zeros = torch.zeros_like(places)
        return Positions(zeros, places, self.rows[:num_active], zeros)


def _inverse(permutation: Tensor) -> Tensor:
    return torch.empty_like(permutation).scatter_(
        0, permutation, torch.arange(permutation.numel(), device=permutation.device)
    )


Order = Union[ExitOrder, RowOrder]


class StackPlanner:
    """The plans of every layer of one stack forward over ``exits`` (B, T).

    With ``every_layer_full`` (no symbol of the table exits early) every plan
    is ``EVERY`` and nothing is ever read from the device. ``step``: the
    forward is one incremental decoder step, whose rows are ordered instead of
    its positions. ``causal``: a teacher-forced decoder (its masks follow time).
    ``ordered``: the layers run the plans on ordered states (the skip path); the
    masked reference keeps the states as they are.
    """

    def __init__(
        self,
        exits: Tensor,
        num_layers: int,
        every_layer_full: bool = False,
        step: bool = False,
        causal: bool = False,
        ordered: bool = True,
    ):
        self.exits = exits
        self.num_layers = num_layers
        self.every_layer_full = every_layer_full
        self.step = step
        self.causal = causal
        self.ordered = ordered
        self._counts: Optional[List[List[int]]] = None
        self._order: Optional[Order] = None
        self._attn_mask: Optional[Tensor] = None

    # --- what the host knows: one read per forward -------------------------------------------------

    def _read_counts(self) -> List[List[int]]:
        """Per layer: the most active positions in one row, the fewest, and all of them.

        The only host read of the forward: every plan is sized by these, and all
        of them are known from the exits before the first layer runs.
        """
        per_row = (self.exits.unsqueeze(0) >= _layers(self.num_layers, self.exits.device)[:, None, None]).sum(2)
        if self.step:  # one position per row: the count of active rows is all there is to know
            total = per_row.sum(1)
            return [total.tolist()] * 3
        most, fewest = torch.aminmax(per_row, dim=1)[::-1]
        return torch.stack([most, fewest, per_row.sum(1)]).tolist()

    @property
    def counts(self) -> List[List[int]]:
        if self._counts is None:
            self._counts = self._read_counts()
            partly = [0 < total < self.num_live for total in self._counts[2]]
            if self.ordered and any(partly):
                self._order = RowOrder(self.exits) if self.step else ExitOrder(self.exits, self.num_layers, self.causal)
        return self._counts

    @property
    def num_live(self) -> int:
        """Non-pad positions of the forward (every live position is active at layer 1)."""
        return self._counts[2][0]

    def any_padding(self, padding: Tensor) -> bool:
        """Whether any position is padding (``padding``: True there): from the counts when
        the plans need them anyway, so a forward still reads from the device once."""
        if self.every_layer_full:
            return bool(padding.any())
        return self.counts[2][0] < self.exits.numel()

    # --- the order the layers work in -------------------------------------------------------------

    @property
    def order(self) -> Optional[Order]:
        """The order of the forward's states, None where no layer is partly active (the states
        stay as they are and full layers run fairseq's own code)."""
        return None if self.every_layer_full or self.counts is None else self._order

    def __call__(self, layer: int) -> LayerPlan:
        """What ``layer`` (1-based) does."""
        if self.every_layer_full:
            return Plan.EVERY
        most, fewest, total = (row[layer - 1] for row in self.counts)
        if total == 0:
            return Plan.SKIP
        order = self._order
        if order is None:
            return Plan.EVERY
        if isinstance(order, RowOrder):
            return Prefix(most, most)
        keys = self.counts[0][0]
        write_mask = order.write_mask(layer, most) if fewest < most else None
        if self._attn_mask is None:
            self._attn_mask = order.attention_mask(keys, padded=self.num_live < self.exits.numel())
        attn_mask = None if self._attn_mask is None else self._attn_mask[:, :, :most]
        return Prefix(most, keys, write_mask, attn_mask)

    def set_exits(self, exits: Tensor) -> None:
        """Exits changed by a rule after a layer: the layers above are planned (and ordered) anew."""
        self.exits = exits
        self._counts = self._order = self._attn_mask = None

    def active_positions(self, layer: int) -> Positions:
        """The positions ``layer`` updated, for a rule to decide on."""
        total = self.counts[2][layer - 1]
        if self._order is not None:
            return self._order.positions(layer, total)
        rows, times = torch.nonzero_static(self.exits >= layer, size=total).unbind(1)
        return Positions(times, rows, rows, times)

    def active_mask(self, layer: int) -> Tensor:
        """(T, B, 1) True where ``layer`` updates the position: for the masked reference."""
        return (self.exits >= layer).t().unsqueeze(-1)
