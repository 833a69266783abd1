"""Decode attention over a paged KV cache, reading the block table directly (no gather of K/V into a copy).

Layout (one layer): k_cache and v_cache are [num_blocks, block_size, num_kv_heads, head_dim]; token t of a
sequence lives in block block_tables[seq, t // block_size] at slot t % block_size. Any strides work, so a
[num_layers, num_blocks, ...] cache can pass one layer's view. context_lens[seq] counts the tokens already in the
cache for that sequence, the current one included. q is [batch, num_heads, head_dim]; query heads share KV heads
in groups (GQA): head h reads KV head h // (num_heads // num_kv_heads).

The kernel runs one program per (sequence, KV head) so a KV block is read once for its whole query-head group,
with an online softmax over the blocks (flash-decoding without the split).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from infleet.runtime.kernels._triton import check_device


def _check_shapes(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
) -> None:
    if q.dim() != 3 or k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise ValueError(
            f"want q [B, H, D] and k/v caches [blocks, block_size, kv_heads, D]; got {tuple(q.shape)}, "
            f"{tuple(k_cache.shape)}, {tuple(v_cache.shape)}"
        )
    b, h, d = q.shape
    kv_heads = k_cache.shape[2]
    if k_cache.shape[3] != d or h % kv_heads:
        raise ValueError(f"{h} query heads of dim {d} do not fit {kv_heads} KV heads of dim {k_cache.shape[3]}")
    if block_tables.dim() != 2 or block_tables.shape[0] != b or context_lens.shape != (b,):
        raise ValueError(f"block_tables must be [{b}, max_blocks] and context_lens [{b}]")
    # reading the lengths back from a GPU would stall every launch (and cannot be captured in a CUDA graph)
    if (
        not context_lens.is_cuda
        and context_lens.numel()
        and int(context_lens.max()) > block_tables.shape[1] * k_cache.shape[1]
    ):
        raise ValueError("a context length exceeds the blocks its block table holds")


def paged_attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    _check_shapes(q, k_cache, v_cache, block_tables, context_lens)
    b, h, d = q.shape
    block_size, kv_heads = k_cache.shape[1], k_cache.shape[2]
    out = torch.zeros_like(q)
    for i in range(b):
        n = int(context_lens[i])
        if n == 0:
            continue
        blocks = block_tables[i, : (n + block_size - 1) // block_size].long()
        k = k_cache[blocks].reshape(-1, kv_heads, d)[:n].to(torch.float32)  # [n, kv_heads, d]
        v = v_cache[blocks].reshape(-1, kv_heads, d)[:n].to(torch.float32)
        k = k.repeat_interleave(h // kv_heads, dim=1)
        v = v.repeat_interleave(h // kv_heads, dim=1)
        scores = torch.einsum("hd,nhd->hn", q[i].to(torch.float32), k) * scale
        out[i] = torch.einsum("hn,nhd->hd", scores.softmax(dim=-1), v).to(q.dtype)
    return out


@triton.jit
def _paged_attention_kernel(  # type: ignore[no-untyped-def]
    q_ptr, k_ptr, v_ptr, bt_ptr, len_ptr, o_ptr, scale,
    stride_qb, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_btb,
    stride_ob, stride_oh,
    GROUP, HEAD_DIM, BLOCK_SIZE,
    BLOCK_G: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    g = tl.arange(0, BLOCK_G)
    t = tl.arange(0, BLOCK_T)
    d = tl.arange(0, BLOCK_D)
    heads = kv_head * GROUP + g
    g_mask = g < GROUP
    d_mask = d < HEAD_DIM
    q = tl.load(q_ptr + seq * stride_qb + heads[:, None] * stride_qh + d[None, :],
                mask=g_mask[:, None] & d_mask[None, :], other=0.0).to(tl.float32)  # fmt: skip
    n = tl.load(len_ptr + seq)
    m_i = tl.full((BLOCK_G,), -1.0e30, dtype=tl.float32)
    l_i = tl.zeros((BLOCK_G,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_G, BLOCK_D), dtype=tl.float32)
    for i in range(0, tl.cdiv(n, BLOCK_SIZE)):
        block = tl.load(bt_ptr + seq * stride_btb + i).to(tl.int64)
        pos = i * BLOCK_SIZE + t
        t_mask = (t < BLOCK_SIZE) & (pos < n)
        kv_mask = t_mask[:, None] & d_mask[None, :]
        k = tl.load(k_ptr + block * stride_kb + t[:, None] * stride_kt + kv_head * stride_kh + d[None, :],
                    mask=kv_mask, other=0.0).to(tl.float32)  # fmt: skip
        v = tl.load(v_ptr + block * stride_vb + t[:, None] * stride_vt + kv_head * stride_vh + d[None, :],
                    mask=kv_mask, other=0.0).to(tl.float32)  # fmt: skip
        s = tl.sum(q[:, None, :] * k[None, :, :], axis=2) * scale  # [BLOCK_G, BLOCK_T]
        s = tl.where(t_mask[None, :], s, -1.0e30)
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp(s - m_new[:, None])
        p = tl.where(t_mask[None, :], p, 0.0)
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
        m_i = m_new
    out = acc / tl.maximum(l_i, 1.0e-30)[:, None]
    tl.store(o_ptr + seq * stride_ob + heads[:, None] * stride_oh + d[None, :], out.to(o_ptr.dtype.element_ty),
             mask=g_mask[:, None] & d_mask[None, :])  # fmt: skip


def paged_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    _check_shapes(q, k_cache, v_cache, block_tables, context_lens)
    check_device(q, k_cache, v_cache, block_tables, context_lens)
    b, h, d = q.shape
    block_size, kv_heads = k_cache.shape[1], k_cache.shape[2]
    if q.stride(2) != 1 or k_cache.stride(3) != 1 or v_cache.stride(3) != 1:
        raise ValueError("q and the caches must be contiguous along head_dim")
    group = h // kv_heads
    out = torch.empty_like(q)
    block_tables = block_tables.to(torch.int32)
    context_lens = context_lens.to(torch.int32).contiguous()
    if b:
        _paged_attention_kernel[(b, kv_heads)](
            q, k_cache, v_cache, block_tables, context_lens, out, scale,
            q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
            out.stride(0), out.stride(1),
            group, d, block_size,
            BLOCK_G=triton.next_power_of_2(group), BLOCK_T=triton.next_power_of_2(block_size),
            BLOCK_D=triton.next_power_of_2(d),
        )  # fmt: skip
    return out
