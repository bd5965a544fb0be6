"""Layer plans: which positions each layer of a stack updates (docs/design.md section 3).

This is the one place that turns exit layers into the work a layer does:
layer ``i`` updates position ``t`` iff ``exits[b, t] >= i`` (section 1). Exits
are batch-major (B, T), like the tokens they come from, with 0 at padding.

Exits are monotone: a position active at layer ``i`` was active at every layer
below. So once a stack orders each row's positions by exit layer, deepest
first (``ExitOrder``), every layer's active positions are the first ones of
each row: a layer works on a narrow view of the ordered states instead of
gathering them. Padding (exit 0) sorts last: nothing beyond the longest row's
live positions is computed (a shorter row's padding inside that prefix is
computed like an exited position and never seen, section 3). The order is
made once per forward and undone once at its end; an incremental decoder step
(one position per row) orders its rows instead (``RowOrder``). On a GPU, where
each operator costs a launch whatever its size, this keeps a partly active
layer as cheap to launch as a full one (docs/benchmark.md, "Operators").

A layer's plan is one of:

- ``Plan.SKIP``: no position is active, the layer does no work at all;
- ``Plan.EVERY``: no position has exited and the states are in their own
  order: fairseq's own layer runs, exactly as in stock BART;
- ``Prefix`` (teacher-forced): the first ``size`` positions of each ordered
  row, through a mask where some row has fewer active positions than that;
- ``StepRows`` (an incremental step): the first ``count`` rows of the step's
  order; with none, the layer still hands its input to the cache;
- ``StepBlock`` (an incremental step, the deep layers of FREE's synchronized
  parallel decoding, docs/design.md section 8): the first ``count`` rows run
  the layer for the step's position and the positions they left pending.

``StackPlanner.read`` is the forward's one host read: the counts of every
layer at once, before the first layer (one per step when decoding
incrementally), not one per layer. A dynamic exit rule (exits/) changes exits
after a layer; ``StackPlanner.replan`` then reads and orders again for the
layers above: one read per layer that decided.
"""

import enum
from typing import NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor


class Plan(enum.Enum):
    SKIP = "no position is active"
    EVERY = "every live position is active, in its own order"


class Prefix(NamedTuple):
    """A teacher-forced layer's work: the first ``size`` ordered positions of each row, queries
    and updates, with keys from the first ``keys``. ``write_mask`` (size, B, 1), True where the
    position is active, is None when every one of them is; ``visible`` (B, 1, size, keys) says
    which keys a query sees (None: every key)."""

    size: int
    keys: int  # the longest row's live positions: every key any query may see
    write_mask: Optional[Tensor] = None
    visible: Optional[Tensor] = None


class StepRows(NamedTuple):
    """An incremental step's layer: its first ``count`` rows in the step's order are active."""

    count: int


class StepBlock(NamedTuple):
    """A deep layer of a synchronized step: its first ``count`` rows in the step's order run it for
    this position and, in the same call, for every earlier position they exited shallow."""

    count: int


LayerPlan = Union[Plan, Prefix, StepRows, StepBlock]


class LayerCounts(NamedTuple):
    """What the host knows of one forward's exits, per layer (index ``layer - 1``)."""

    most: Tuple[int, ...]  # active positions in the fullest row (in a step: active rows)
    fewest: Tuple[int, ...]  # active positions in the emptiest row (in a step: active rows)
    total: Tuple[int, ...]  # active positions in all
    positions: int  # positions of the forward, padding included

    @property
    def live(self) -> int:
        """Non-pad positions: every one of them is active at layer 1."""
        return self.total[0]

    @property
    def padded(self) -> bool:
        return self.live < self.positions

    def partly_active(self) -> bool:
        """Whether some layer updates some live positions and not others."""
        return any(0 < total < self.live for total in self.total)


def _layers(num_layers: int, device) -> Tensor:
    return torch.arange(1, num_layers + 1, device=device)


def read_counts(exits: Tensor, num_layers: int, step: bool) -> LayerCounts:
    """The counts every plan is sized by, in one device-to-host transfer."""
    per_row = (exits.unsqueeze(0) >= _layers(num_layers, exits.device)[:, None, None]).sum(2)  # (L, B)
    if step:  # one position per row: the number of active rows is all there is to know
        total = tuple(per_row.sum(1).tolist())
        return LayerCounts(total, total, total, exits.numel())
    fewest, most = torch.aminmax(per_row, dim=1)
    most, fewest, total = map(tuple, torch.stack([most, fewest, per_row.sum(1)]).tolist())
    return LayerCounts(most, fewest, total, exits.numel())


class Positions(NamedTuple):
    """Where a layer's N active positions are: in the states the layers see, (T, B, C) as
    ``states[state_time, state_row]``, and in the forward's own (B, T) layout."""

    state_time: Tensor
    state_row: Tensor
    row: Tensor
    time: Tensor


class ExitOrder:
    """Each row's positions ordered by exit layer, deepest first (ties in time order).

    ``sort`` moves time-major states (T, B, C) into that order and ``unsort``
    back. Masks for attention in the new order come from ``times`` (the time
    index of each ordered position): the causal rule compares time indices,
    not slots.
    """

    def __init__(self, exits: Tensor, num_layers: int, causal: bool):
        self.exits, self.times = exits.sort(dim=1, descending=True, stable=True)
        self._index = self.times.t().unsqueeze(-1)  # (T, B, 1): gathers ordered slots from time
        self._active = self.exits.t().unsqueeze(-1) >= _layers(num_layers, exits.device)[:, None, None, None]
        self._causal = causal

    def sort(self, x: Tensor) -> Tensor:
        return x.gather(0, self._index.expand_as(x))

    def unsort(self, x: Tensor) -> Tensor:
        return torch.empty_like(x).scatter_(0, self._index.expand_as(x), x)

    def visible(self, keys: int, padded: bool) -> Optional[Tensor]:
        """(B, 1, T, keys): which of the first ``keys`` ordered positions each ordered query sees."""
        mask = None
        if self._causal:
            mask = self.times[:, None, :keys] <= self.times[:, :, None]
        if padded:
            live = self.exits[:, None, :keys] > 0
            mask = live if mask is None else mask & live
        return None if mask is None else mask.unsqueeze(1)

    def write_mask(self, layer: int, size: int) -> Tensor:
        return self._active[layer - 1, :size]

    def positions(self, layer: int, num_active: int) -> Positions:
        rows, slots = torch.nonzero_static(self.exits >= layer, size=num_active).unbind(1)
        return Positions(slots, rows, rows, self.times[rows, slots])


class RowOrder:
    """One incremental step's rows (one position each) ordered by exit layer, deepest first.

    ``rows[j]`` is the row at ordered place ``j``, ``places[r]`` the place of row
    ``r``; ``sort``/``unsort`` move states (1, B, C) into that order and back.
    """

    def __init__(self, exits: Tensor):
        _, self.rows = exits[:, 0].sort(descending=True, stable=True)
        self.places = torch.empty_like(self.rows).scatter_(
            0, self.rows, torch.arange(self.rows.numel(), device=self.rows.device)
        )

    def sort(self, x: Tensor) -> Tensor:
        return x.index_select(1, self.rows)

    def unsort(self, x: Tensor) -> Tensor:
        return x.index_select(1, self.places)

    def positions(self, layer: int, num_active: int) -> Positions:
        places = torch.arange(num_active, device=self.rows.device)
        zeros = torch.zeros_like(places)
        return Positions(zeros, places, self.rows[:num_active], zeros)


Order = Union[ExitOrder, RowOrder]


class StackPlanner:
    """The plans of one stack forward over ``exits`` (B, T), and the order its states are in.

    It is the one owner of that order: the loop over layers moves the states
    with ``sort``/``unsort``/``replan``, and the decoder's cache reads ``order``
    to know where a step's rows go.

    ``every_layer_full`` (no symbol of the table exits early and no rule
    decides): every plan is ``EVERY`` (a step's: all its rows) and nothing is
    ever read from the device. ``step``: the forward is one incremental decoder
    step, whose rows are ordered instead of its positions. ``causal``: a
    teacher-forced decoder (its masks follow time). ``skips``: the layers run
    the plans on ordered states (the skip path); the masked reference keeps the
    states as they are and asks only ``active_mask``. ``synchronized_from``: a
    step's layers from this one up are ``StepBlock``s (FREE's deep layers).
    """

    def __init__(
        self,
        exits: Tensor,
        num_layers: int,
        every_layer_full: bool = False,
        step: bool = False,
        causal: bool = False,
        skips: bool = True,
        synchronized_from: Optional[int] = None,
    ):
        self.exits = exits
        self.num_layers = num_layers
        self.every_layer_full = every_layer_full
        self.step = step
        self.causal = causal
        self.skips = skips
        self.synchronized_from = synchronized_from
        self.counts: Optional[LayerCounts] = None
        self.order: Optional[Order] = None
        self._visible: Optional[Tensor] = None

    def read(self) -> Optional[LayerCounts]:
        """Read the counts and order the states where some layer is partly active: the
        forward's one host read. None, reading nothing, for a stack with every layer full."""
        if self.every_layer_full:
            return None
        self.counts = read_counts(self.exits, self.num_layers, self.step)
        self.order = None
        self._visible = None
        if self.skips and self.counts.partly_active():
            self.order = RowOrder(self.exits) if self.step else ExitOrder(self.exits, self.num_layers, self.causal)
        return self.counts

    def replan(self, exits: Tensor, x: Tensor) -> Tensor:
        """New ``exits`` from a rule after a layer: read and order again for the layers above;
        returns the states ``x`` moved from the old order to the new one."""
        x = self.unsort(x)
        self.exits = exits
        self.read()
        return self.sort(x)

    def sort(self, x: Tensor) -> Tensor:
        """Time-major states (T, B, C) in their own order -> in the order the layers work in."""
        return x if self.order is None else self.order.sort(x)

    def unsort(self, x: Tensor) -> Tensor:
        return x if self.order is None else self.order.unsort(x)

    def layer_plan(self, layer: int) -> LayerPlan:
        """What ``layer`` (1-based) does, on states in the planner's order."""
        if self.every_layer_full:
            return StepRows(self.exits.size(0)) if self.step else Plan.EVERY
        most, fewest, total = (column[layer - 1] for column in self.counts[:3])
        if self.step:
            synchronized = self.synchronized_from is not None and layer >= self.synchronized_from
            return StepBlock(total) if synchronized else StepRows(total)
        if total == 0:
            return Plan.SKIP
        if self.order is None:
            return Plan.EVERY
        keys = self.counts.most[0]
        write_mask = self.order.write_mask(layer, most) if fewest < most else None
        if self._visible is None:
            self._visible = self.order.visible(keys, padded=self.counts.padded)
        visible = None if self._visible is None else self._visible[:, :, :most]
        return Prefix(most, keys, write_mask, visible)

    def active_positions(self, layer: int) -> Positions:
        """The positions ``layer`` updated, for a rule to decide on."""
        total = self.counts.total[layer - 1]
        if self.order is not None:
            return self.order.positions(layer, total)
        rows, times = torch.nonzero_static(self.exits >= layer, size=total).unbind(1)
        return Positions(times, rows, rows, times)

    def active_mask(self, layer: int) -> Tensor:
        """(T, B, 1) True where ``layer`` updates the position: for the masked reference."""
        return (self.exits >= layer).t().unsqueeze(-1)
