"""The decoder's incremental state: the one owner of its cache slots (docs/design.md section 4).

Each decoder layer keeps two buffers in fairseq's ``incremental_state``, under
its attention modules' own keys, so fairseq's stock layer can read and extend
them and fairseq's ``reorder_incremental_state`` reorders them for beam search:

- self-attention: ``prev_key``/``prev_value`` (B, heads, S, head_dim) and
  ``prev_key_padding_mask`` (B, S) hold the keys and values of every past
  position, each projected from that position's input to this layer (its
  frozen state if it exited below: the KV-cache invariant). ``pending_input``
  (B, P, C) and ``pending_padding_mask`` (B, P) hold the inputs of the last P
  steps that had no active query at this layer: their projection is deferred
  until a step needs keys (one product for all of them), and never happens
  if none does.
- cross-attention: ``prev_key``/``prev_value`` of the encoder output,
  projected once per generation, at its first step; with fairseq's beamable attention one row
  per sentence instead of one per hypothesis.

Reorder contract: fairseq reorders a self-attention buffer by selecting along
dim 0 of *every* tensor in it, so every slot here is batch-first with one row
per hypothesis; the pending slots are reordered like the keys they will
become. The cross-attention buffer is left alone when it has one row per
sentence (beamable), which is why its rows are mapped, not reordered.
"""

from typing import Dict, Optional, Tuple

import torch
from fairseq.modules import MultiheadAttention
from torch import Tensor

from .active_attention import project_kv

IncrementalState = Dict[str, Dict[str, Optional[Tensor]]]

PREV_KEY = "prev_key"
PREV_VALUE = "prev_value"
PREV_KEY_PADDING_MASK = "prev_key_padding_mask"
PENDING_INPUT = "pending_input"
PENDING_PADDING_MASK = "pending_padding_mask"

KeysValues = Tuple[Tensor, Tensor, Optional[Tensor]]  # keys, values, key padding mask (True = pad)


def _cat_padding(old: Optional[Tensor], old_len: int, new: Optional[Tensor], new_len: int, bsz: int):
    """Append key-padding masks (B, len) where either side may be None (= no padding);
    fairseq's attention may have cached one as floats, so both become bool."""
    if old is None and new is None:
        return None
    device = (old if old is not None else new).device
    old = torch.zeros(bsz, old_len, dtype=torch.bool, device=device) if old is None else old.bool()
    new = torch.zeros(bsz, new_len, dtype=torch.bool, device=device) if new is None else new.bool()
    return torch.cat([old, new], dim=1)


def _stock_layout(t: Tensor) -> Tensor:
    """A cache tensor as fairseq's stock layer needs it: it views cached keys/values as
    (B * heads, S, head_dim), which a projection's permuted output does not allow."""
    return t.contiguous()


class SelfAttentionCache:
    """One decoder layer's self-attention cache, for one incremental step."""

    def __init__(self, attn: MultiheadAttention, incremental_state: IncrementalState):
        self.attn = attn
        self.state = incremental_state
        self.buffer = attn._get_input_buffer(incremental_state)

    @property
    def has_pending(self) -> bool:
        return PENDING_INPUT in self.buffer

    def defer(self, kv_in: Tensor, padding_mask: Optional[Tensor]) -> None:
        """Keep this step's layer inputs ``kv_in`` (1, B, C) to project when a query needs them."""
        self._append_pending(kv_in, padding_mask)
        self._save()

    def keys_values(self, kv_in: Optional[Tensor] = None, padding_mask: Optional[Tensor] = None) -> KeysValues:
        """The whole cache, brought up to date: pending inputs (and this step's ``kv_in``,
        if given) projected in one product and appended."""
        if kv_in is not None:
            self._append_pending(kv_in, padding_mask)
        buffer = self.buffer
        pending = buffer.pop(PENDING_INPUT, None)
        pending_pad = buffer.pop(PENDING_PADDING_MASK, None)
        if pending is not None:
            keys, values = project_kv(self.attn, pending, batch_first=True)
            past = 0
            if PREV_KEY in buffer:
                past = buffer[PREV_KEY].size(2)
                keys = torch.cat([buffer[PREV_KEY], keys], dim=2)
                values = torch.cat([buffer[PREV_VALUE], values], dim=2)
            else:
                keys, values = _stock_layout(keys), _stock_layout(values)
            key_pad = _cat_padding(
                buffer.get(PREV_KEY_PADDING_MASK), past, pending_pad, pending.size(1), pending.size(0)
            )
            buffer[PREV_KEY], buffer[PREV_VALUE], buffer[PREV_KEY_PADDING_MASK] = keys, values, key_pad
            self._save()
        return buffer.get(PREV_KEY), buffer.get(PREV_VALUE), buffer.get(PREV_KEY_PADDING_MASK)

    def _append_pending(self, kv_in: Tensor, padding_mask: Optional[Tensor]) -> None:
        new = kv_in.transpose(0, 1)  # (B, 1, C)
        pending = self.buffer.get(PENDING_INPUT)
        past = 0 if pending is None else pending.size(1)
        self.buffer[PENDING_PADDING_MASK] = _cat_padding(
            self.buffer.get(PENDING_PADDING_MASK), past, padding_mask, 1, new.size(0)
        )
        self.buffer[PENDING_INPUT] = new if pending is None else torch.cat([pending, new], dim=1)

    def _save(self) -> None:
        self.attn._set_input_buffer(self.state, self.buffer)


def cross_attention_kv(
    attn: MultiheadAttention,
    encoder_out: Tensor,
    encoder_padding_mask: Optional[Tensor],
    incremental_state: Optional[IncrementalState],
    num_rows: int,
) -> KeysValues:
    """Keys and values of the encoder output (T, B, C) for cross-attention.

    Teacher-forced they are projected per call; incrementally, once per
    generation (at its first step, ``project_sources``) and kept. With fairseq's beamable attention (``set_beam_size``)
    one row per sentence is kept, as stock BART does; ``source_rows`` maps a
    decoder row to its row here.
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


def source_rows(rows: Tensor, num_rows: int, num_source_rows: int) -> Tensor:
    """The cross-attention cache row of each decoder row in ``rows``."""
    if num_source_rows == num_rows:
        return rows
    return torch.div(rows, num_rows // num_source_rows, rounding_mode="floor")


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


def pending_steps(attn: MultiheadAttention, incremental_state: IncrementalState) -> int:
    """How many steps' inputs wait unprojected in this layer's self-attention cache."""
    pending = attn._get_input_buffer(incremental_state).get(PENDING_INPUT)
    return 0 if pending is None else pending.size(1)
