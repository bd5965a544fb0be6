"""Attention computed for active queries only, over keys of every position.

HashEE's saving lives here: the query projection, the scores, the weighted sum
and the output projection run for the tokens a layer still updates (the first
positions of each ordered row, modules/layer_plan.py), while the keys and
values cover every position, exited ones included (docs/design.md section 3).
The projections are fairseq's own ``MultiheadAttention`` modules, so parameter
names stay those of fairseq's BART.
"""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from fairseq.modules import MultiheadAttention
from torch import Tensor

from .few_rows_linear import few_rows_linear


def _fused_kv_parameters(attn: MultiheadAttention) -> Tuple[Tensor, Optional[Tensor]]:
    """fairseq's separate key and value projections as one (2C, C) weight.

    One product over all positions instead of two. When no gradient is needed
    the fused copy is kept and rebuilt only when a weight changes (an optimizer
    step or load bumps the tensors' versions; moving them changes the pointer).
    """
    k, v = attn.k_proj, attn.v_proj
    tensors = [t for t in (k.weight, v.weight, k.bias, v.bias) if t is not None]

    def fuse():
        bias = None if k.bias is None else torch.cat([k.bias, v.bias])
        return torch.cat([k.weight, v.weight]), bias

    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return fuse()
    stamp = tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)
    cached = getattr(attn, "_hashee_fused_kv", None)
    if cached is None or cached[0] != stamp:
        with torch.no_grad():
            cached = (stamp, fuse())
        attn._hashee_fused_kv = cached
    return cached[1]


def project_kv_fused(attn: MultiheadAttention, x: Tensor) -> Tensor:
    """Keys and values of ``x`` (..., C) side by side, (..., 2C): keys first."""
    weight, bias = _fused_kv_parameters(attn)
    return F.linear(x, weight, bias)


def project_kv(attn: MultiheadAttention, x: Tensor) -> Tuple[Tensor, Tensor]:
    """Keys and values of the time-major ``x`` (S, B, C) as (B, heads, S, head_dim)."""
    kv = project_kv_fused(attn, x)
    seq_len, bsz, _ = kv.shape
    kv = kv.view(seq_len, bsz, 2, attn.num_heads, attn.head_dim).permute(2, 1, 3, 0, 4)
    return kv[0], kv[1]


def attend(
    attn: MultiheadAttention, query: Tensor, keys: Tensor, values: Tensor, visible: Optional[Tensor] = None
) -> Tensor:
    """Multi-head attention output (Tq, B, C) of the time-major ``query`` states (Tq, B, C).

    ``keys``/``values`` are (B, heads, S, head_dim); ``visible`` (B, 1, Tq, S) or any shape
    that broadcasts to it, True where a query sees a key (None: every key).
    """
    num_heads, head_dim = attn.num_heads, attn.head_dim
    tq, bsz, _ = query.shape
    q = few_rows_linear(attn.q_proj, query).view(tq, bsz, num_heads, head_dim).permute(1, 2, 0, 3)
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=visible, dropout_p=_dropout_p(attn))
    return few_rows_linear(attn.out_proj, out.permute(2, 0, 1, 3).reshape(tq, bsz, num_heads * head_dim))


def attend_grouped(
    attn: MultiheadAttention,
    query: Tensor,
    keys: Tensor,
    values: Tensor,
    visible: Optional[Tensor],
    slots: Optional[Tuple[Tensor, Tensor]],
    per_group: int,
) -> Tensor:
    """Attention output (Tq, N, C) of ``query`` (Tq, N, C), where each query row reads the keys
    of its group: fairseq's beamable cross-attention, one key row per sentence, which its
    ``per_group`` hypotheses share. No group's keys are copied.

    ``keys``/``values`` are (G, heads, S, head_dim), ``visible`` (G, 1, 1, S) or None.
    ``slots`` gives each query row's (group, slot), slots below ``per_group``, for incremental
    rows that are a subset in another order; None: the query rows are every row of every group
    in order. A group's queries (its rows' Tq positions each) are attended together as the query
    positions of one row; slots without a query attend with a zero query.
    """
    if slots is None and per_group == 1:
        return attend(attn, query, keys, values, visible)
    num_heads, head_dim = attn.num_heads, attn.head_dim
    tq, num_rows, channels = query.shape
    num_groups = keys.size(0)
    q = few_rows_linear(attn.q_proj, query)
    if slots is None:
        packed = q.transpose(0, 1).reshape(num_groups, per_group * tq, channels)
    else:
        group, slot = slots
        if tq > 1:  # a row's positions take consecutive slots
            offsets = torch.arange(tq, device=slot.device)[:, None]
            slots = (group.expand(tq, num_rows), slot * tq + offsets)
        packed = q.new_zeros(num_groups, per_group * tq, channels).index_put_(slots, q[0] if tq == 1 else q)
    packed = packed.view(num_groups, -1, num_heads, head_dim).transpose(1, 2)
    out = F.scaled_dot_product_attention(packed, keys, values, attn_mask=visible, dropout_p=_dropout_p(attn))
    out = out.transpose(1, 2)
    if slots is None:
        out = out.reshape(num_rows, tq, channels).transpose(0, 1)
    else:
        out = out[slots].view(tq, num_rows, channels)
    return few_rows_linear(attn.out_proj, out)


def _dropout_p(attn: MultiheadAttention) -> float:
    drop = attn.dropout_module
    return drop.p if (attn.training or drop.apply_during_inference) else 0.0
