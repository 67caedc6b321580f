"""open_clip's ``ResidualAttentionBlock`` re-expressed op by op, so the fast paths can skip work.

Two exact savings need the block opened up: attending to cached keys/values of a constant
prefix (causal text towers), and computing queries, attention output and MLP only for the
rows the pooling reads (the last block). Everything else is the block's own modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

KeyValue = tuple[torch.Tensor, torch.Tensor]  # (batch or 1, heads, length, head_dim) each


def decomposable(transformer: nn.Module) -> bool:
    """True when every block is a plain batch-first ``ResidualAttentionBlock`` over ``nn.MultiheadAttention``."""
    return bool(getattr(transformer, "batch_first", False)) and all(
        type(block) is ResidualAttentionBlock
        and block.attn.batch_first
        and block.attn._qkv_same_embed_dim
        and block.attn.bias_k is None
        and not block.attn.add_zero_attn
        and not hasattr(block, "ln_1_kv")
        for block in transformer.resblocks
    )


def block_forward(
    block: ResidualAttentionBlock,
    x: torch.Tensor,
    mask: torch.Tensor | None,
    past: KeyValue | None = None,
    rows: slice | None = None,
) -> tuple[torch.Tensor, KeyValue]:
    """One block over ``x`` (batch, length, width), attending to ``past`` keys/values first.

    ``mask`` is additive over (query rows, past + length). With ``rows`` only those rows are
    returned (their queries, attention and MLP); keys and values still come from every row.
    Returns the output rows and this call's own keys/values (for caching a prefix).
    """
    attn = block.attn
    width, heads = x.shape[-1], attn.num_heads
    weight, bias = attn.in_proj_weight, attn.in_proj_bias
    h = block.ln_1(x)
    if rows is None:
        q, k, v = F.linear(h, weight, bias).chunk(3, dim=-1)
    else:  # keys and values from every row, queries from the kept rows only
        k, v = F.linear(h, weight[width:], None if bias is None else bias[width:]).chunk(2, dim=-1)
        x, h = x[:, rows], h[:, rows]
        q = F.linear(h, weight[:width], None if bias is None else bias[:width])
    q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))
    keys, values = k, v
    if past is not None:
        batch = x.shape[0]
        keys = torch.cat([past[0].expand(batch, -1, -1, -1), k], dim=2)
        values = torch.cat([past[1].expand(batch, -1, -1, -1), v], dim=2)
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=None if mask is None else aligned_mask(mask, q))
    x = x + block.ls_1(attn.out_proj(out.transpose(1, 2).flatten(2)))
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, (k, v)


def aligned_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``mask`` in ``like``'s dtype, in memory SDPA's CUDA kernels can read.

    The memory-efficient CUDA kernel reads the additive mask in 16-byte vectors. PyTorch pads a mask whose row
    stride is unaligned, but not one whose data starts mid-row, and the fast paths slice the causal mask
    (rows ``start:``, the last row only): in bf16 on an H200 that faulted with "misaligned address". A fresh
    buffer with rows padded to 8 elements is aligned; an aligned mask (and any mask on the CPU) is used as is,
    so callers that align once (the cached masks of the fast paths) pay nothing per step.
    """
    mask = mask.to(like.dtype)
    if like.device.type != "cuda" or (mask.storage_offset() % 8 == 0 and mask.stride(-2) % 8 == 0):
        return mask
    cols = mask.shape[-1]
    padded = mask.new_zeros(*mask.shape[:-1], -(-cols // 8) * 8)
    padded[..., :cols] = mask
    return padded[..., :cols]
