"""Attention computed for active queries only, over keys of every position.

HashEE's saving lives here: the query projection, the scores, the weighted sum
and the output projection run for the tokens a layer still updates, while the
keys and values cover every position, exited ones included (DESIGN.md
section 3). The projections are fairseq's own ``MultiheadAttention`` modules,
so parameter names stay those of fairseq's BART.
"""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from fairseq.modules import MultiheadAttention
from torch import Tensor

from .active_tokens import ActiveTokens


def project_kv(attn: MultiheadAttention, x: Tensor) -> Tuple[Tensor, Tensor]:
    """Keys and values of time-major ``x`` (S, B, C) as (B, heads, S, head_dim)."""
    seq_len, bsz, _ = x.shape
    shape = (seq_len, bsz, attn.num_heads, attn.head_dim)
    k = attn.k_proj(x).view(shape).permute(1, 2, 0, 3)
    v = attn.v_proj(x).view(shape).permute(1, 2, 0, 3)
    return k, v


def _pack(values: Tensor, sel: ActiveTokens, fill) -> Tensor:
    """Scatter per-token ``values`` (N, ...) into (Ba, n_slots, ...) by row and slot."""
    num_rows = sel.row_ids.numel()
    if values.size(0) == num_rows * sel.n_slots:
        # Row-major order with every slot used: packing is a reshape.
        return values.reshape((num_rows, sel.n_slots) + values.shape[1:])
    packed = values.new_full((num_rows, sel.n_slots) + values.shape[1:], fill)
    return packed.index_put((sel.rows, sel.slots), values)


def _unpack(packed: Tensor, sel: ActiveTokens) -> Tensor:
    if sel.flat.numel() == packed.size(0) * packed.size(1):
        return packed.reshape((-1,) + packed.shape[2:])
    return packed[sel.rows, sel.slots]


def attend_active(
    attn: MultiheadAttention,
    query: Tensor,
    keys: Tensor,
    values: Tensor,
    sel: ActiveTokens,
    key_padding_mask: Optional[Tensor] = None,
    query_positions: Optional[Tensor] = None,
) -> Tensor:
    """Multi-head attention output (N, C) for the active ``query`` states (N, C).

    ``keys``/``values`` are (Ba, heads, S, head_dim), one row per entry of
    ``sel.row_ids``; ``key_padding_mask`` (Ba, S) is True at padding.
    ``query_positions`` (N,), when given, makes the attention causal: a query
    sees the keys at positions up to and including its own.
    """
    num_heads, head_dim = attn.num_heads, attn.head_dim
    q = attn.q_proj(query).view(-1, num_heads, head_dim)
    q = _pack(q, sel, 0.0).transpose(1, 2)  # (Ba, heads, n_slots, head_dim)

    src_len = keys.size(2)
    mask: Optional[Tensor] = None
    if key_padding_mask is not None:
        mask = ~key_padding_mask[:, None, None, :]
    if query_positions is not None:
        # Unused slots see every key, which keeps their softmax finite.
        last = _pack(query_positions, sel, src_len - 1)
        causal = torch.arange(src_len, device=keys.device) <= last[:, :, None]
        causal = causal[:, None, :, :]
        mask = causal if mask is None else mask & causal

    drop = attn.dropout_module
    dropout_p = drop.p if (attn.training or drop.apply_during_inference) else 0.0
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, dropout_p=dropout_p)
    out = _unpack(out.transpose(1, 2), sel).reshape(-1, num_heads * head_dim)
    return attn.out_proj(out)
