"""The decoder's incremental state: the one owner of its cache slots (docs/design.md section 4).

Self-attention (``SelfAttentionCache``, one per generation, kept in
``incremental_state`` under the decoder's key): every layer's keys and values
live in storage indexed by (position, physical row), written once, in place,
by the row that computed them. Which physical row holds a hypothesis's key at
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
from .layer_plan import ActivePositions, every_row

IncrementalState = Dict[str, Dict[str, Optional[Tensor]]]

PREV_KEY = "prev_key"
PREV_VALUE = "prev_value"
PREV_KEY_PADDING_MASK = "prev_key_padding_mask"

# Positions the storage grows by at a time. A growth copies the past once:
# GROWTH times fewer copies than concatenating at every step, while the unused
# tail (at most GROWTH - 1 positions) keeps peak memory at stock BART's.
GROWTH = 4

KeysValues = Tuple[Tensor, Tensor, Optional[Tensor]]  # keys, values, key padding mask (True = pad)


class _LayerStore:
    """One layer's keys and values, (capacity, physical rows, C) each, and the inputs
    of the positions whose projection waits (from ``projected`` to the last)."""

    __slots__ = ("keys", "values", "inputs", "projected")

    def __init__(self):
        self.keys: Optional[Tensor] = None
        self.values: Optional[Tensor] = None
        self.inputs: Optional[Tensor] = None
        self.projected = 0


class SelfAttentionCache:
    """Every decoder layer's self-attention keys and values of one incremental generation."""

    STATE_KEY = "self_attention_cache"

    def __init__(self, num_rows: int, device: torch.device):
        self.num_physical = num_rows
        self.length = 0  # positions cached, the current step's included
        self.live: List[int] = []  # live rows at each position
        # ancestry[r, s]: the physical row holding row r's key at position s.
        self.ancestry = torch.empty(num_rows, 0, dtype=torch.long, device=device)
        self.padding: Optional[Tensor] = None  # (capacity, physical rows, 1), True at padding, once any
        self._stores: Dict[str, _LayerStore] = {}
        self._index_all: Optional[Tensor] = None  # this step's gather index of every live row
        self._every_row: Optional[ActivePositions] = None  # the plan of a step with every row active

    @classmethod
    def for_step(cls, decoder, incremental_state: IncrementalState, num_rows: int, padding: Optional[Tensor]):
        """The generation's cache, advanced to a new position for ``num_rows`` rows whose
        padding (rows, 1) is ``padding`` (None: no padding)."""
        cache = decoder.get_incremental_state(incremental_state, cls.STATE_KEY)
        if cache is None:
            cache = cls(num_rows, padding.device if padding is not None else decoder.exit_table.device)
            decoder.set_incremental_state(incremental_state, cls.STATE_KEY, cache)
        cache._begin_step(num_rows, padding)
        return cache

    @classmethod
    def of(cls, decoder, incremental_state: IncrementalState) -> Optional["SelfAttentionCache"]:
        return decoder.get_incremental_state(incremental_state, cls.STATE_KEY)

    def _begin_step(self, num_rows: int, padding: Optional[Tensor]) -> None:
        if num_rows != self.ancestry.size(0):
            raise HashEEError(
                f"incremental decoding: a step has {num_rows} rows but the cache was reordered to "
                f"{self.ancestry.size(0)}"
            )
        t = self.length
        if t == self.ancestry.size(1):
            self.ancestry = torch.cat([self.ancestry, self.ancestry.new_zeros(num_rows, GROWTH)], dim=1)
        rows = torch.arange(num_rows, device=self.ancestry.device)
        self.ancestry[:, t] = rows
        if padding is not None or self.padding is not None:
            like = padding if padding is not None else self.padding
            self.padding = _room(self.padding, self.ancestry.size(1), self.num_physical, like)
            self.padding[t, :num_rows] = False if padding is None else padding
        self.live.append(num_rows)
        self.length = t + 1
        self._index_all = None

    def reorder(self, new_order: Tensor) -> None:
        """Beam search's reorder: row r continues old row ``new_order[r]``; no key moves."""
        if new_order.size(0) > self.num_physical:
            raise HashEEError(
                f"incremental decoding: reordered to {new_order.size(0)} rows, more than the "
                f"{self.num_physical} the generation started with"
            )
        self.ancestry = self.ancestry.index_select(0, new_order)
        self._index_all = None

    def defer(self, attn: MultiheadAttention, kv_in: Tensor) -> None:
        """Keep this step's layer inputs ``kv_in`` (1, rows, C) until a query needs their keys."""
        store = self._store(attn)
        waiting = self.length - 1 - store.projected  # positions already waiting before this one
        store.inputs = _room(store.inputs, waiting + 1, self.num_physical, kv_in)
        store.inputs[waiting, : kv_in.size(1)] = kv_in[0]

    def keys_values(self, attn: MultiheadAttention, kv_in: Tensor, rows: Optional[Tensor]) -> KeysValues:
        """Keys and values (len(rows), heads, positions, head_dim) of ``rows`` (None: every
        live row), up to this step, whose layer inputs are ``kv_in`` (1, rows, C); waiting
        positions are projected first, in one product with this step's."""
        store = self._store(attn)
        t = self.length - 1
        first = store.projected
        if first < t:
            self.defer(attn, kv_in)
            # Later positions have no more live rows than the first waiting one.
            kv_in, store.inputs = store.inputs[: t + 1 - first, : self.live[first]], None
        kv = project_kv_fused(attn, kv_in)  # (positions, rows, 2C)
        channels = kv.size(-1) // 2
        capacity = self.ancestry.size(1)
        store.keys = _room(store.keys, capacity, self.num_physical, kv[..., :channels])
        store.values = _room(store.values, capacity, self.num_physical, kv[..., :channels])
        store.keys[first : t + 1, : kv.size(1)] = kv[..., :channels]
        store.values[first : t + 1, : kv.size(1)] = kv[..., channels:]
        store.projected = t + 1

        index = self._gather_index(rows)
        shape = (index.size(0), self.length, attn.num_heads, attn.head_dim)
        flat = index.view(-1)
        keys = store.keys.view(-1, channels).index_select(0, flat).view(shape).transpose(1, 2)
        values = store.values.view(-1, channels).index_select(0, flat).view(shape).transpose(1, 2)
        padding = None
        if self.padding is not None:
            padding = self.padding.view(-1).index_select(0, flat).view(index.shape)
        return keys, values, padding

    def every_row(self) -> ActivePositions:
        """The plan of this step with every live row active: the same for every layer."""
        num_rows = self.ancestry.size(0)
        if self._every_row is None or self._every_row.batch_size != num_rows:
            self._every_row = every_row(num_rows, self.ancestry.device)
        return self._every_row

    def pending(self, attn: MultiheadAttention) -> int:
        """How many positions' inputs wait unprojected at this layer."""
        return self.length - self._store(attn).projected

    def _store(self, attn: MultiheadAttention) -> _LayerStore:
        store = self._stores.get(attn._incremental_state_id)
        if store is None:
            store = self._stores[attn._incremental_state_id] = _LayerStore()
        return store

    def _gather_index(self, rows: Optional[Tensor]) -> Tensor:
        """(rows, positions): where in a store flattened to (positions * physical rows, C)
        each of ``rows``'s keys is."""
        if rows is None and self._index_all is not None:
            return self._index_all
        ancestry = self.ancestry[:, : self.length] if rows is None else self.ancestry[rows, : self.length]
        offsets = torch.arange(self.length, device=ancestry.device) * self.num_physical
        index = ancestry + offsets
        if rows is None:
            self._index_all = index
        return index


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
) -> KeysValues:
    """Keys and values of the encoder output (T, B, C) for cross-attention.

    Teacher-forced they are projected per call; incrementally, once per
    generation (at its first step, ``project_sources``) and kept. With fairseq's
    beamable attention (``set_beam_size``) one row per sentence is kept, as
    stock BART does, and a sentence's hypotheses query it together.
    """
    if incremental_state is None:
        keys, values = project_kv(attn, encoder_out)
        return keys, values, encoder_padding_mask
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
    return buffer[PREV_KEY], buffer[PREV_VALUE], buffer.get(PREV_KEY_PADDING_MASK)


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
