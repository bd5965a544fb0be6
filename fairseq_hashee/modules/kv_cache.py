"""The decoder's incremental state: the one owner of its cache slots (docs/design.md section 4).

Self-attention (``SelfAttentionCache``, one per generation, kept in
``incremental_state`` under the decoder's key): every layer's keys and values
live in storage indexed by (position, physical row), written once, in place,
by the step that computed them, in the order its layers saw the rows
(modules/layer_plan.py, ``RowOrder``). Which physical row holds a hypothesis's key at
position s is the *ancestry* map, shared by every layer: beam search's
reorder rewrites that small (rows, positions) index map and copies no key or
value, and a step appends its column without copying the past (fairseq's
stock cache concatenates every step and copies every layer's cache at every
reorder: at batch 8 the torch profiler put those copies at 40% of a step). A query
gathers its own hypothesis's keys through the map. Each key is projected
from that position's input to the layer, its frozen state if it exited below
(the KV-cache invariant). A layer with no active query at a step keeps the
step's input instead (deferred); the next step with a query there projects
every waiting position in one product.

Cross-attention: ``prev_key``/``prev_value`` of the encoder output in the
attention module's own fairseq buffer, projected once per generation at its
first step; with fairseq's beamable attention one row per sentence instead of
one per hypothesis, left alone by fairseq's reorder while every sentence is
live. ``SourceRows`` says which of those key rows each query row reads.
"""

import functools
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from fairseq.modules import MultiheadAttention
from torch import Tensor

from ..errors import HashEEError
from .active_attention import project_kv, project_kv_fused
from .layer_plan import RowOrder, StackPlanner

IncrementalState = Dict[str, Dict[str, Optional[Tensor]]]

PREV_KEY = "prev_key"
PREV_VALUE = "prev_value"
PREV_KEY_PADDING_MASK = "prev_key_padding_mask"

# Positions the storage grows by at a time. A growth copies the past once:
# GROWTH times fewer copies than concatenating at every step, while the unused
# tail (at most GROWTH - 1 positions) keeps peak memory at stock BART's.
GROWTH = 4

KeysValues = Tuple[Tensor, Tensor, Optional[Tensor]]  # keys, values, the keys each query sees (None: all)


class _LayerStore:
    """One layer's keys and values side by side, (capacity, physical rows, 2C), and the
    inputs of the positions whose projection waits (from ``projected`` to the last)."""

    __slots__ = ("kv", "inputs", "projected")

    def __init__(self):
        self.kv: Optional[Tensor] = None
        self.inputs: Optional[Tensor] = None
        self.projected = 0


class _StepGather(NamedTuple):
    """Where the keys of a step's rows are, in the order the layers see the rows (``order``):
    made once per order (a rule that exits rows changes it), not per layer."""

    order: Optional[RowOrder]
    index: Tensor  # (rows, positions): where in a store flattened to (positions * physical rows, 2C) each key is
    visible: Optional[Tensor]  # (rows, 1, 1, positions): the keys each row sees; None: all


class SynchronizedBlock:
    """One step's queries at its deep layers under FREE's synchronized parallel decoding
    (docs/design.md section 8): the step's first ``n`` rows in its order (those that went deep),
    each at the last ``W`` positions. ``computed`` (W, n) marks the step's own position and those
    the row left pending; the others (earlier positions of a row that left fewer pending) are
    computed and thrown away, as a prefix's slack is, and never written."""

    __slots__ = ("rows", "flat", "positions", "computed", "visible", "entry", "states")

    def __init__(self, rows: Tensor, flat: Tensor, positions: Tensor, computed: Tensor, visible, entry: Tensor):
        self.rows = rows  # (n,) the rows, by their index in the step (for the FLOPs meter)
        self.flat = flat  # (W, n) each query's (position, physical row) in a store flattened to its slots
        self.positions = positions  # (W,) absolute positions
        self.computed = computed
        self.visible = visible  # (n or 1, 1, W, positions so far): the keys each query sees (causal, no padding)
        self.entry = entry  # (W, n, C) the inputs of the first deep layer (the shallow exit's states)
        self.states = entry  # the inputs of the next deep layer


class SelfAttentionCache:
    """Every decoder layer's self-attention keys and values of one incremental generation.

    A step works on its rows in its planner's order (``RowOrder``: deepest exit
    first, so each layer's queries are the first rows); the cache reads that
    order from the planner whenever it needs it. The step's column is stored in
    the order the step began with: physical row ``j`` holds the row at place
    ``j``, and the ancestry map records where each row went.
    """

    STATE_KEY = "self_attention_cache"

    def __init__(self, num_rows: int, device: torch.device):
        self.num_physical = num_rows
        self.length = 0  # positions cached, the current step's included
        self.live: List[int] = []  # live rows at each position
        # ancestry[r, s]: the physical row holding row r's key at position s.
        self.ancestry = torch.empty(num_rows, 0, dtype=torch.long, device=device)
        self._offsets = self.ancestry.new_zeros(0)  # s * physical rows, per position of the capacity
        self.padding: Optional[Tensor] = None  # (capacity, physical rows, 1), True at padding, once any
        self._stores: Dict[str, _LayerStore] = {}
        self._planner: Optional[StackPlanner] = None  # the current step's, owner of its row order
        self._column_order: Optional[RowOrder] = None  # the order the step's column is laid out in
        self._gathered: Optional[_StepGather] = None
        self._physical: Optional[Tuple[Optional[RowOrder], Tensor]] = None  # per order: physical row of each place
        # FREE's synchronized parallel decoding, once a step has deep layers (StepBlock plans):
        self.stacked: Optional[Tensor] = None  # (capacity, physical rows, C): each position's input to the deep layers
        self.pending: Optional[Tensor] = None  # (capacity, physical rows, 1): True where those layers have not run
        self.block: Optional[SynchronizedBlock] = None  # this step's, from its first deep layer on
        self._synchronized = False  # whether this step's first deep layer has run

    @classmethod
    def for_step(cls, decoder, incremental_state: IncrementalState, planner: StackPlanner, padding: Optional[Tensor]):
        """The generation's cache, advanced to a new position for the rows of ``planner`` (a
        step's, already read), whose padding (rows, 1) is ``padding`` (None: no padding)."""
        cache = decoder.get_incremental_state(incremental_state, cls.STATE_KEY)
        if cache is None:
            cache = cls(planner.exits.size(0), decoder.exit_table.device)
            decoder.set_incremental_state(incremental_state, cls.STATE_KEY, cache)
        cache._begin_step(planner, padding)
        return cache

    @classmethod
    def of(cls, decoder, incremental_state: IncrementalState) -> Optional["SelfAttentionCache"]:
        return decoder.get_incremental_state(incremental_state, cls.STATE_KEY)

    def _begin_step(self, planner: StackPlanner, padding: Optional[Tensor]) -> None:
        num_rows, order = planner.exits.size(0), planner.order
        if num_rows != self.ancestry.size(0):
            raise HashEEError(
                f"incremental decoding: a step has {num_rows} rows but the cache was reordered to "
                f"{self.ancestry.size(0)}"
            )
        t = self.length
        if t == self.ancestry.size(1):
            self.ancestry = torch.cat([self.ancestry, self.ancestry.new_zeros(num_rows, GROWTH)], dim=1)
            self._offsets = torch.arange(self.ancestry.size(1), device=self.ancestry.device) * self.num_physical
        self.ancestry[:, t] = torch.arange(num_rows, device=self.ancestry.device) if order is None else order.places
        if padding is not None or self.padding is not None:
            like = padding if padding is not None else self.padding
            self.padding = _room(self.padding, self.ancestry.size(1), self.num_physical, like)
            if padding is None:
                self.padding[t, :num_rows] = False
            else:
                self.padding[t, :num_rows] = padding if order is None else padding.index_select(0, order.rows)
        self.live.append(num_rows)
        self.length = t + 1
        self._planner, self._column_order = planner, order
        self._gathered = self._physical = None
        self.block, self._synchronized = None, False

    def reorder(self, new_order: Tensor) -> None:
        """Beam search's reorder: row r continues old row ``new_order[r]``; no key moves."""
        if new_order.size(0) > self.num_physical:
            raise HashEEError(
                f"incremental decoding: reordered to {new_order.size(0)} rows, more than the "
                f"{self.num_physical} the generation started with"
            )
        self.ancestry = self.ancestry.index_select(0, new_order)
        self._gathered = None

    def _gather(self) -> _StepGather:
        """The gather index and visible keys of the step's rows in the planner's current order."""
        order = self._planner.order
        if self._gathered is not None and self._gathered.order is order:
            return self._gathered
        ancestry = self.ancestry if order is None else self.ancestry.index_select(0, order.rows)
        index = ancestry[:, : self.length] + self._offsets[: self.length]
        visible = None
        if self.padding is not None:
            padding = self.padding.view(-1).index_select(0, index.view(-1))
            visible = padding.logical_not().view(index.size(0), 1, 1, self.length)
        self._gathered = _StepGather(order, index, visible)
        return self._gathered

    def _write(self, column: Tensor, rows: Tensor) -> None:
        """Write a step's ``rows`` (rows, C), in the layers' current order, into ``column``
        (physical rows, C): at the physical rows the step's column began with."""
        order = self._planner.order
        if order is self._column_order:  # place j is physical row j
            column[: rows.size(0)] = rows
            return
        if self._physical is None or self._physical[0] is not order:
            physical = self.ancestry[:, self.length - 1]
            self._physical = (order, physical if order is None else physical.index_select(0, order.rows))
        column.index_copy_(0, self._physical[1], rows)

    def defer(self, attn: MultiheadAttention, kv_in: Tensor) -> None:
        """Keep this step's layer inputs ``kv_in`` (1, rows, C) until a query needs their keys."""
        store = self._store(attn)
        slot = self.waiting(attn) - 1  # after the positions already waiting
        store.inputs = _room(store.inputs, slot + 1, self.num_physical, kv_in)
        self._write(store.inputs[slot], kv_in[0])

    def keys_values(self, attn: MultiheadAttention, kv_in: Tensor, num_queries: int) -> KeysValues:
        """Keys and values (num_queries, heads, positions, head_dim) of the first ``num_queries``
        rows in the step's order, up to this step, whose layer inputs are ``kv_in`` (1, rows, C);
        waiting positions are projected first, in one product with this step's."""
        store = self._store(attn)
        t, first = self.length - 1, store.projected
        deferred = self.waiting(attn) > 1
        if deferred:
            self.defer(attn, kv_in)
            # Later positions have no more live rows than the first waiting one.
            kv_in, store.inputs = store.inputs[: t + 1 - first, : self.live[first]], None
        kv = project_kv_fused(attn, kv_in)  # (positions, rows, 2C)
        store.kv = _room(store.kv, self.ancestry.size(1), self.num_physical, kv)
        if deferred:  # the waiting inputs were kept by physical row
            store.kv[first : t + 1, : kv.size(1)] = kv
        else:
            self._write(store.kv[t], kv[0])
        store.projected = t + 1

        where = self._gather()
        gathered = store.kv.view(-1, kv.size(-1)).index_select(0, where.index[:num_queries].reshape(-1))
        gathered = gathered.view(num_queries, self.length, 2, attn.num_heads, attn.head_dim)
        keys, values = gathered.permute(2, 0, 3, 1, 4).unbind(0)
        visible = None if where.visible is None else where.visible[:num_queries]
        return keys, values, visible

    def waiting(self, attn: MultiheadAttention) -> int:
        """How many positions' keys at this layer are not projected yet, this step's included."""
        return self.length - self._store(attn).projected

    def synchronize(self, x: Tensor, count: int) -> Optional[SynchronizedBlock]:
        """The step's block at its deep layers, made at the first of them from that layer's input
        ``x`` (1, rows, C): every row's state is stacked, the rows past the first ``count`` are left
        pending, and the first ``count`` rows take their pending positions along (one host read: how
        many positions the longest of them left). None when no row goes deep."""
        if self._synchronized:
            return self.block
        self._synchronized = True
        t, capacity = self.length - 1, self.ancestry.size(1)
        self.stacked = _room(self.stacked, capacity, self.num_physical, x)
        self._write(self.stacked[t], x[0])
        places = torch.arange(x.size(1), device=x.device)
        self.pending = _room(self.pending, capacity, self.num_physical, places.new_zeros(1, 1, dtype=torch.bool))
        self._write(self.pending[t], (places >= count)[:, None])
        if count == 0:
            return None
        index = self._gather().index[:count]  # (n, t + 1)
        pending = self.pending.view(-1).index_select(0, index.reshape(-1)).view(count, t + 1)
        width = int(pending.sum(dim=1).max()) + 1
        positions = torch.arange(t + 1 - width, t + 1, device=x.device)
        flat = index[:, t + 1 - width :].t()  # (W, n)
        computed = pending[:, t + 1 - width :].t() | (positions == t)[:, None]
        self.pending.view(-1).index_fill_(0, flat.reshape(-1), False)  # computed now, or never pending
        causal = torch.arange(t + 1, device=x.device)[None, :] <= positions[:, None]  # (W, t + 1)
        padding = self._gather().visible
        visible = causal[None, None] if padding is None else causal & padding[:count]  # (n or 1, 1, W, t + 1)
        entry = self.stacked.view(-1, x.size(-1)).index_select(0, flat.reshape(-1)).view(width, count, -1)
        order = self._planner.order
        rows = order.rows[:count] if order is not None else places[:count]
        self.block = SynchronizedBlock(rows, flat, positions, computed, visible, entry)
        return self.block

    def block_keys_values(self, attn: MultiheadAttention, kv_in: Tensor) -> KeysValues:
        """Keys and values (n, heads, positions, head_dim) of the block's rows at a deep layer whose
        inputs for the block's queries are ``kv_in`` (W, n, C): the computed queries' keys and
        values are written first, in one product, so that each query reads its own and those of
        the positions before it, all computed from their own states."""
        block, store = self.block, self._store(attn)
        kv = project_kv_fused(attn, kv_in)  # (W, n, 2C)
        store.kv = _room(store.kv, self.ancestry.size(1), self.num_physical, kv)
        slots = store.kv.view(-1, kv.size(-1))
        index = block.flat.reshape(-1)
        kept = slots.index_select(0, index).view_as(kv)
        slots.index_copy_(0, index, torch.where(block.computed[..., None], kv, kept).reshape(-1, kv.size(-1)))
        count = kv.size(1)
        gathered = slots.index_select(0, self._gather().index[:count].reshape(-1))
        gathered = gathered.view(count, self.length, 2, attn.num_heads, attn.head_dim)
        keys, values = gathered.permute(2, 0, 3, 1, 4).unbind(0)
        return keys, values, block.visible

    def _store(self, attn: MultiheadAttention) -> _LayerStore:
        store = self._stores.get(attn._incremental_state_id)
        if store is None:
            store = self._stores[attn._incremental_state_id] = _LayerStore()
        return store


def _stock_layout(t: Tensor) -> Tensor:
    """A cache tensor as fairseq's stock layer needs it: it views cached keys/values as
    (B * heads, S, head_dim), which a projection's permuted output does not allow."""
    return t.contiguous()


def _room(store: Optional[Tensor], needed: int, num_rows: int, like: Tensor) -> Tensor:
    """``store`` (positions, ``num_rows``, C), with room for ``needed`` positions: made
    (zeroed, like ``like``) or grown by whole ``GROWTH`` blocks, the past copied once."""
    if store is not None and store.size(0) >= needed:
        return store
    capacity = -(-needed // GROWTH) * GROWTH
    grown = like.new_zeros(capacity, num_rows, like.size(-1))
    if store is not None:
        grown[: store.size(0)] = store
    return grown


def cross_attention_kv(
    attn: MultiheadAttention,
    encoder_out: Tensor,
    encoder_padding_mask: Optional[Tensor],
    incremental_state: Optional[IncrementalState],
    num_rows: int,
) -> Tuple[Tensor, Tensor]:
    """Keys and values of the encoder output (T, B, C) for cross-attention, (rows, heads, T, head_dim).

    Teacher-forced they are projected per call; incrementally, once per
    generation (at its first step, ``project_sources``) and kept. With fairseq's
    beamable attention (``set_beam_size``) one row per sentence is kept, as
    stock BART does, and a sentence's hypotheses query it together.
    """
    if incremental_state is None:
        return project_kv(attn, encoder_out)
    buffer = attn._get_input_buffer(incremental_state)
    if PREV_KEY not in buffer:
        beam = attn.beam_size
        if beam > 1 and encoder_out.size(1) == num_rows:
            encoder_out = encoder_out[:, ::beam]
            if encoder_padding_mask is not None:
                encoder_padding_mask = encoder_padding_mask[::beam]
        keys, values = project_kv(attn, encoder_out)
        buffer[PREV_KEY], buffer[PREV_VALUE] = _stock_layout(keys), _stock_layout(values)
        buffer[PREV_KEY_PADDING_MASK] = encoder_padding_mask
        attn._set_input_buffer(incremental_state, buffer)
    return buffer[PREV_KEY], buffer[PREV_VALUE]


class SourceRows:
    """The rows of the cross-attention keys that a forward's queries read, and what they see.

    Teacher-forced, the keys have one row per query row, or (fairseq's beamable
    shortcut, rescoring a beam) one per sentence, whose ``per_group`` hypotheses
    read it. Incrementally they are the cache's rows, one per sentence under
    beamable attention; a step's queries are its first rows in the planner's
    order, which a rule may change after any layer, so their (group, slot) pairs
    follow ``planner.order`` and are made again only when it changes.
    """

    def __init__(self, num_rows: int, num_source_rows: int, source_padding: Optional[Tensor], planner=None):
        self.num_rows = num_rows
        self.per_group = num_rows // num_source_rows
        self._padding = source_padding
        self._planner = planner  # a step's; None teacher-forced, where rows keep their order
        self._slots: Optional[Tuple[Optional[RowOrder], Tensor, Tensor]] = None

    @functools.cached_property
    def visible(self) -> Optional[Tensor]:
        """(source rows, 1, 1, S): the source positions a query sees (None: every one); made at
        the first layer that asks, for every layer of the forward."""
        if self._padding is None:
            return None
        # fairseq's own attention may have cached the mask as floats (1.0 = pad).
        return self._padding.logical_not()[:, None, None, :]

    def slots(self, num_queries: int) -> Optional[Tuple[Tensor, Tensor]]:
        """(group, slot) of the first ``num_queries`` rows in the step's order: the key row each
        reads and its place among that row's hypotheses; None where the queries are every row in
        their own order."""
        order = None if self._planner is None else self._planner.order
        if order is None and num_queries == self.num_rows:
            return None
        if self._slots is None or self._slots[0] is not order:
            rows = order.rows if order is not None else torch.arange(self.num_rows, device=self._planner.exits.device)
            self._slots = (order, torch.div(rows, self.per_group, rounding_mode="floor"), rows % self.per_group)
        _, group, slot = self._slots
        return group[:num_queries], slot[:num_queries]

    @classmethod
    def of_step(cls, attn: MultiheadAttention, incremental_state: IncrementalState, planner) -> "SourceRows":
        """A step's: the cross-attention cache's rows (made at the generation's first step)."""
        buffer = attn._get_input_buffer(incremental_state)
        num_rows = planner.exits.size(0)
        return cls(num_rows, buffer[PREV_KEY].size(0), buffer.get(PREV_KEY_PADDING_MASK), planner)


def project_sources(
    layers,
    encoder_out: Tensor,
    encoder_padding_mask: Optional[Tensor],
    incremental_state: IncrementalState,
    num_rows: int,
) -> None:
    """Every layer's cross-attention keys and values, at the first step of a generation.

    Not when a layer first has a query: with beamable attention fairseq's BART
    stops reordering ``encoder_out`` (``BARTModel.set_beam_size``), so once a
    sentence has finished it no longer lines up with the live hypotheses, while
    the caches made at the first step are reordered with the rest of the state.
    A layer whose positions all exit below it until then would otherwise attend
    to another sentence's source. Stock BART projects them all at the first step too.
    """
    for layer in layers:
        if layer.encoder_attn is not None:
            cross_attention_kv(layer.encoder_attn, encoder_out, encoder_padding_mask, incremental_state, num_rows)


def cached_source_lengths(attn: MultiheadAttention, incremental_state: IncrementalState) -> Tensor:
    """Source length of every row of the cross-attention cache (for the FLOPs meter).

    The cache, not ``encoder_out``, has the rows of the live hypotheses: with
    beamable attention ``encoder_out`` is never reordered.
    """
    buffer = attn._get_input_buffer(incremental_state)
    keys, pad = buffer[PREV_KEY], buffer.get(PREV_KEY_PADDING_MASK)
    if pad is None:
        return torch.full((keys.size(0),), keys.size(2), dtype=torch.long, device=keys.device)
    return pad.logical_not().sum(dim=1)
