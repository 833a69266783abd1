"""Prefill attention over the paged cache, tiled: a tile of up to BLOCK_M consecutive rows of one prefill chunk
attends to its sequence's blocks through the block table, causally, with tensor-core dots and an online softmax
(flash-attention's loop, reading K/V in place instead of from a contiguous copy).

A tile is (first row in the flattened batch, rows, the sequence's row in `block_tables`, position of its first
row); row i of a tile sits at position pos0 + i and attends to keys 0..pos0 + i. The chunk's own K/V must already
be in the cache. One program per (tile, query head); query head h reads KV head h // (heads // kv_heads).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from infleet.runtime.kernels._triton import PREFILL_TILE_ROWS, check_device, dot_in_fp32


def prefill_attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    tiles: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """The same contract computed row by row in float32 (for the tests)."""
    out = torch.zeros_like(q)
    block_size, kv_heads, d = k_cache.shape[1], k_cache.shape[2], k_cache.shape[3]
    group = q.shape[1] // kv_heads
    for row0, rows, seq, pos0 in tiles.tolist():
        for i in range(rows):
            n = pos0 + i + 1
            blocks = block_tables[seq, : -(-n // block_size)].long()
            k = k_cache[blocks].reshape(-1, kv_heads, d)[:n].float().repeat_interleave(group, dim=1)
            v = v_cache[blocks].reshape(-1, kv_heads, d)[:n].float().repeat_interleave(group, dim=1)
            scores = torch.einsum("hd,nhd->hn", q[row0 + i].float(), k) * scale
            out[row0 + i] = torch.einsum("hn,nhd->hd", scores.softmax(dim=-1), v).to(q.dtype)
    return out


@triton.jit
def _prefill_kernel(  # type: ignore[no-untyped-def]
    q_ptr, k_ptr, v_ptr, bt_ptr, tile_ptr, o_ptr, scale,
    stride_qt, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_btb,
    stride_ot, stride_oh,
    GROUP, HEAD_DIM, BLOCK_SIZE,
    BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, DOT_F32: tl.constexpr,
):  # fmt: skip
    tile = tl.program_id(0)
    head = tl.program_id(1)
    kv_head = head // GROUP
    row0 = tl.load(tile_ptr + tile * 4)
    rows = tl.load(tile_ptr + tile * 4 + 1)
    seq = tl.load(tile_ptr + tile * 4 + 2)
    pos0 = tl.load(tile_ptr + tile * 4 + 3)
    m = tl.arange(0, BLOCK_M)
    t = tl.arange(0, BLOCK_T)
    d = tl.arange(0, BLOCK_D)
    m_mask = m < rows
    d_mask = d < HEAD_DIM
    q = tl.load(q_ptr + (row0 + m)[:, None].to(tl.int64) * stride_qt + head * stride_qh + d[None, :],
                mask=m_mask[:, None] & d_mask[None, :], other=0.0)  # fmt: skip
    if DOT_F32:
        q = q.to(tl.float32)
    q_pos = pos0 + m
    m_i = tl.full((BLOCK_M,), -1.0e30, dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for j in range(0, tl.cdiv(pos0 + rows, BLOCK_SIZE)):
        block = tl.load(bt_ptr + seq * stride_btb + j).to(tl.int64)
        k_pos = j * BLOCK_SIZE + t
        t_mask = t < BLOCK_SIZE
        kv_mask = t_mask[:, None] & d_mask[None, :]
        k = tl.load(k_ptr + block * stride_kb + t[:, None] * stride_kt + kv_head * stride_kh + d[None, :],
                    mask=kv_mask, other=0.0)  # fmt: skip
        v = tl.load(v_ptr + block * stride_vb + t[:, None] * stride_vt + kv_head * stride_vh + d[None, :],
                    mask=kv_mask, other=0.0)  # fmt: skip
        if DOT_F32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k)) * scale  # [BLOCK_M, BLOCK_T]
        allowed = (k_pos[None, :] <= q_pos[:, None]) & t_mask[None, :] & m_mask[:, None]
        s = tl.where(allowed, s, -1.0e30)
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp(s - m_new[:, None])
        p = tl.where(allowed, p, 0.0)
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    out = acc / tl.maximum(l_i, 1.0e-30)[:, None]
    tl.store(o_ptr + (row0 + m)[:, None].to(tl.int64) * stride_ot + head * stride_oh + d[None, :],
             out.to(o_ptr.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])  # fmt: skip


def prefill_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    tiles: torch.Tensor,
    scale: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """q [T, H, D]; tiles [n, 4] int32 (see the module docstring); writes the tiles' rows of `out` (or a new
    tensor; rows outside every tile are left as they are)."""
    check_device(q, k_cache, v_cache, block_tables, tiles)
    if q.stride(2) != 1 or k_cache.stride(3) != 1 or v_cache.stride(3) != 1:
        raise ValueError("q and the caches must be contiguous along head_dim")
    if tiles.dim() != 2 or tiles.shape[1] != 4:
        raise ValueError(f"tiles must be [n, 4], got {tuple(tiles.shape)}")
    _, h, d = q.shape
    block_size, kv_heads = k_cache.shape[1], k_cache.shape[2]
    out = torch.empty_like(q) if out is None else out
    tiles = tiles.to(torch.int32).contiguous()
    block_tables = block_tables.to(torch.int32)
    if tiles.shape[0]:
        _prefill_kernel[(tiles.shape[0], h)](
            q, k_cache, v_cache, block_tables, tiles, out, scale,
            q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
            out.stride(0), out.stride(1),
            h // kv_heads, d, block_size,
            BLOCK_M=PREFILL_TILE_ROWS, BLOCK_T=max(16, triton.next_power_of_2(block_size)),
            BLOCK_D=max(16, triton.next_power_of_2(d)), DOT_F32=dot_in_fp32(q.dtype),
        )  # fmt: skip
    return out
