"""Attention computed for active queries only, over keys of every position.

HashEE's saving lives here: the query projection, the scores, the weighted sum
and the output projection run for the tokens a layer still updates, while the
keys and values cover every position, exited ones included (docs/design.md
section 3). The projections are fairseq's own ``MultiheadAttention`` modules,
so parameter names stay those of fairseq's BART.
"""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from fairseq.modules import MultiheadAttention
from torch import Tensor

from .few_rows_linear import few_rows_linear
from .layer_plan import ActivePositions


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


def pack(values: Tensor, plan: ActivePositions, fill) -> Tensor:
    """Scatter per-position ``values`` (N, ...) into (Ba, n_slots, ...) by rank and slot;
    slots a row does not use hold ``fill``."""
    num_rows = plan.rows.numel()
    if values.size(0) == num_rows * plan.n_slots:
        # Row-major order with every slot used: packing is a reshape.
        return values.reshape((num_rows, plan.n_slots) + values.shape[1:])
    packed = values.new_full((num_rows, plan.n_slots) + values.shape[1:], fill)
    return packed.index_put((plan.rank, plan.slot), values)


def unpack(packed: Tensor, plan: ActivePositions) -> Tensor:
    """Inverse of ``pack``: (Ba, n_slots, ...) back to (N, ...) in the plan's order."""
    if plan.flat.numel() == packed.size(0) * packed.size(1):
        return packed.reshape((-1,) + packed.shape[2:])
    return packed[plan.rank, plan.slot]


def attend_active(
    attn: MultiheadAttention,
    query: Tensor,
    keys: Tensor,
    values: Tensor,
    plan: ActivePositions,
    key_padding_mask: Optional[Tensor] = None,
    query_positions: Optional[Tensor] = None,
) -> Tensor:
    """Multi-head attention output (N, C) for the active ``query`` states (N, C).

    ``keys``/``values`` are (Ba, heads, S, head_dim), one row per entry of
    ``plan.rows``; ``key_padding_mask`` (Ba, S) is True at padding.
    ``query_positions`` (N,), when given, makes the attention causal: a query
    sees the keys at positions up to and including its own.
    """
    num_heads, head_dim = attn.num_heads, attn.head_dim
    q = few_rows_linear(attn.q_proj, query).view(-1, num_heads, head_dim)
    q = pack(q, plan, 0.0).transpose(1, 2)  # (Ba, heads, n_slots, head_dim)

    src_len = keys.size(2)
    mask: Optional[Tensor] = None
    if key_padding_mask is not None:
        # fairseq's own attention may have cached the mask as floats (1.0 = pad).
        mask = key_padding_mask[:, None, None, :].logical_not()
    if query_positions is not None:
        # Unused slots see every key, which keeps their softmax finite.
        last = pack(query_positions, plan, src_len - 1)
        causal = torch.arange(src_len, device=keys.device) <= last[:, :, None]
        causal = causal[:, None, :, :]
        mask = causal if mask is None else mask & causal

    drop = attn.dropout_module
    dropout_p = drop.p if (attn.training or drop.apply_during_inference) else 0.0
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, dropout_p=dropout_p)
    out = unpack(out.transpose(1, 2), plan).reshape(-1, num_heads * head_dim)
    return few_rows_linear(attn.out_proj, out)
