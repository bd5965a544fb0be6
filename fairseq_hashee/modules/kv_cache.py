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
live.
"""

from typing import Dict, List, Optional, Tuple

import torch
from fairseq.modules import MultiheadAttention
from torch import Tensor

from ..errors import HashEEError
from .active_attention import project_kv, project_kv_fused
from .layer_plan import RowOrder

IncrementalState = Dict[str, Dict[str, Optional[Tensor]]]

PREV_KEY = "prev_key"
PREV_VALUE = "prev_value"
PREV_KEY_PADDING_MASK = "prev_key_padding_mask"

# Positions the storage grows by at a time. A growth copies the past once:
# GROWTH times fewer copies than concatenating at every step, while the unused
# tail (at most GROWTH - 1 positions) keeps peak memory at stock BART's.
GROWTH = 4

KeysValues = Tuple[Tensor, Tensor, Optional[Tensor]]  # keys, values, which keys each query sees (None: all)


class _LayerStore:
    """One layer's keys and values side by side, (capacity, physical rows, 2C), and the
    inputs of the positions whose projection waits (from ``projected`` to the last)."""

    __slots__ = ("kv", "inputs", "projected")

    def __init__(self):
        self.kv: Optional[Tensor] = None
        self.inputs: Optional[Tensor] = None
        self.projected = 0


class SelfAttentionCache:
    """Every decoder layer's self-attention keys and values of one incremental generation.

    A step works on its rows in the planner's order (``RowOrder``: deepest exit
    first, so each layer's queries are the first rows). Its column is stored in
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
        self._order: Optional[RowOrder] = None  # the order the layers see this step's rows in
        self._physical: Optional[Tensor] = None  # physical row of each place, when not its own
        self._index: Optional[Tensor] = None  # this step's gather index of every row, in order
        self._keep: Optional[Tensor] = None  # this step's keys that each row sees, in order
        self._groups: Optional[Tuple[int, Optional[Tuple[Tensor, Tensor]]]] = None

    @classmethod
    def for_step(
        cls,
        decoder,
        incremental_state: IncrementalState,
        num_rows: int,
        padding: Optional[Tensor],
        order: Optional[RowOrder],
    ):
        """The generation's cache, advanced to a new position for ``num_rows`` rows whose
        padding (rows, 1) is ``padding`` (None: no padding), seen by the layers in ``order``
        (None: as they are)."""
        cache = decoder.get_incremental_state(incremental_state, cls.STATE_KEY)
        if cache is None:
            cache = cls(num_rows, decoder.exit_table.device)
            decoder.set_incremental_state(incremental_state, cls.STATE_KEY, cache)
        cache._begin_step(num_rows, padding, order)
        return cache

    @classmethod
    def of(cls, decoder, incremental_state: IncrementalState) -> Optional["SelfAttentionCache"]:
        return decoder.get_incremental_state(incremental_state, cls.STATE_KEY)

    def _begin_step(self, num_rows: int, padding: Optional[Tensor], order: Optional[RowOrder]) -> None:
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
        self._order, self._physical = order, None
        self._forget_step_indices()

    def follow(self, order: Optional[RowOrder]) -> None:
        """The layers above see this step's rows in a new ``order`` (a rule exited some): the
        step's keys still go to the physical rows it began with (None: the rows as they are)."""
        column = self.ancestry[:, self.length - 1]
        self._order = order
        self._physical = column.clone() if order is None else column.index_select(0, order.rows)
        self._forget_step_indices()

    def reorder(self, new_order: Tensor) -> None:
        """Beam search's reorder: row r continues old row ``new_order[r]``; no key moves."""
        if new_order.size(0) > self.num_physical:
            raise HashEEError(
                f"incremental decoding: reordered to {new_order.size(0)} rows, more than the "
                f"{self.num_physical} the generation started with"
            )
        self.ancestry = self.ancestry.index_select(0, new_order)
        self._forget_step_indices()

    def _forget_step_indices(self) -> None:
        self._index = self._keep = self._groups = None

    def defer(self, attn: MultiheadAttention, kv_in: Tensor) -> None:
        """Keep this step's layer inputs ``kv_in`` (1, rows, C) until a query needs their keys."""
        store = self._store(attn)
        waiting = self.length - 1 - store.projected  # positions already waiting before this one
        store.inputs = _room(store.inputs, waiting + 1, self.num_physical, kv_in)
        self._write(store.inputs[waiting], kv_in[0])

    def keys_values(self, attn: MultiheadAttention, kv_in: Tensor, num_queries: int) -> KeysValues:
        """Keys and values (num_queries, heads, positions, head_dim) of the first ``num_queries``
        rows in the step's order, up to this step, whose layer inputs are ``kv_in`` (1, rows, C);
        waiting positions are projected first, in one product with this step's."""
        store = self._store(attn)
        t = self.length - 1
        first = store.projected
        if first < t:
            self.defer(attn, kv_in)
            # Later positions have no more live rows than the first waiting one.
            kv_in, store.inputs = store.inputs[: t + 1 - first, : self.live[first]], None
        kv = project_kv_fused(attn, kv_in)  # (positions, rows, 2C)
        store.kv = _room(store.kv, self.ancestry.size(1), self.num_physical, kv)
        if first < t:  # the waiting inputs were kept by physical row
            store.kv[first : t + 1, : kv.size(1)] = kv
        else:
            self._write(store.kv[t], kv[0])
        store.projected = t + 1

        index = self._gather_index()[:num_queries]
        gathered = store.kv.view(-1, kv.size(-1)).index_select(0, index.reshape(-1))
        gathered = gathered.view(num_queries, self.length, 2, attn.num_heads, attn.head_dim)
        keys, values = gathered.permute(2, 0, 3, 1, 4).unbind(0)
        keep = None if self._keep is None else self._keep[:num_queries]
        return keys, values, keep

    def source_groups(self, num_queries: int, num_groups: int) -> Optional[Tuple[Tensor, Tensor]]:
        """(group, slot) of the first ``num_queries`` rows in the step's order, where a group is a
        row of the cross-attention cache (a sentence, under beamable attention) and a slot one
        of its hypotheses; None where they are every row in order."""
        per_group = self.ancestry.size(0) // num_groups
        if self._order is None and num_queries == self.ancestry.size(0):
            return None
        if self._groups is None or self._groups[0] != per_group:
            rows = (
                self._order.rows
                if self._order is not None
                else torch.arange(per_group * num_groups, device=self.ancestry.device)
            )
            self._groups = (per_group, (torch.div(rows, per_group, rounding_mode="floor"), rows % per_group))
        group, slot = self._groups[1]
        return group[:num_queries], slot[:num_queries]

    def pending(self, attn: MultiheadAttention) -> int:
        """How many positions' inputs wait unprojected at this layer."""
        return self.length - self._store(attn).projected

    def _write(self, column: Tensor, rows: Tensor) -> None:
        """Write a step's ``rows`` (rows, C), in the layers' order, into ``column`` (physical rows, C)."""
        if self._physical is None:
            column[: rows.size(0)] = rows
        else:
            column.index_copy_(0, self._physical, rows)

    def _store(self, attn: MultiheadAttention) -> _LayerStore:
        store = self._stores.get(attn._incremental_state_id)
        if store is None:
            store = self._stores[attn._incremental_state_id] = _LayerStore()
        return store

    def _gather_index(self) -> Tensor:
        """(rows, positions), rows in the step's order: where in a store flattened to
        (positions * physical rows, C) each row's key is. Made once a step, with the keys
        each row sees."""
        if self._index is None:
            ancestry = self.ancestry if self._order is None else self.ancestry.index_select(0, self._order.rows)
            self._index = ancestry[:, : self.length] + self._offsets[: self.length]
            if self.padding is not None:
                padding = self.padding.view(-1).index_select(0, self._index.view(-1))
                self._keep = padding.logical_not().view(self._index.size(0), 1, 1, self.length)
        return self._index


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


def source_keep(
    attn: MultiheadAttention, encoder_padding_mask: Optional[Tensor], incremental_state: Optional[IncrementalState]
) -> Optional[Tensor]:
    """(rows, 1, 1, S): the source positions a cross-attention query sees, for every layer of
    a forward (incrementally, the rows of the cache; None: every position)."""
    if incremental_state is not None:
        encoder_padding_mask = attn._get_input_buffer(incremental_state).get(PREV_KEY_PADDING_MASK)
    if encoder_padding_mask is None:
        return None
    # fairseq's own attention may have cached the mask as floats (1.0 = pad).
    return encoder_padding_mask.logical_not()[:, None, None, :]


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
