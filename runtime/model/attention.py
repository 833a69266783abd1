"""Paged attention on a flattened batch: write new K/V into cache slots, then attend over each sequence's blocks.

A step's batch is laid out as: first `num_decode` single-token decodes, then prefill chunks one after another.
Decodes are attended in one padded call (the lever on CPU: one gather and one fused kernel for the whole batch);
prefill chunks one by one, since each is already a large matmul. The metadata is built once per step and shared
by every layer. These functions are the seam where a Triton paged-attention kernel can replace the torch path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from infleet.runtime.kernels import dispatch as kernels


@dataclass
class KVCache:
    """One layer's cache: `[num_blocks, block_size, num_kv_heads, head_dim]` for keys and for values."""

    k: Tensor
    v: Tensor

    @classmethod
    def allocate(
        cls, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype
    ) -> KVCache:
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
        return cls(torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype))


@dataclass
class PrefillSegment:
    start: int  # first row of this chunk in the flattened batch
    query_len: int
    context_len: int  # tokens in the cache after this step, including the chunk
    block_table: Tensor  # [num_blocks] block ids covering context_len
    mask: Tensor | None  # [query_len, padded context] True where attending is allowed; None: fresh causal prompt


@dataclass
class AttentionMetadata:
    slot_mapping: Tensor  # [T] flat cache slot each new token's K/V goes to
    num_decode: int
    decode_block_tables: Tensor  # [num_decode, max_blocks], padded with block 0
    decode_mask: Tensor  # [num_decode, 1, 1, max_blocks * block_size] True for real keys
    prefills: list[PrefillSegment]

    @classmethod
    def build(
        cls, query_lens: list[int], context_lens: list[int], block_tables: list[list[int]], block_size: int
    ) -> AttentionMetadata:
        """Sequences whose query length is 1 must come first (the engine orders the batch that way)."""
        slots: list[int] = []
        for qlen, ctx, table in zip(query_lens, context_lens, block_tables, strict=True):
            for pos in range(ctx - qlen, ctx):
                slots.append(table[pos // block_size] * block_size + pos % block_size)
        num_decode = 0
        while num_decode < len(query_lens) and query_lens[num_decode] == 1:
            num_decode += 1
        max_blocks = max(((c + block_size - 1) // block_size for c in context_lens[:num_decode]), default=0)
        tables = torch.zeros((num_decode, max_blocks), dtype=torch.long)
        for i in range(num_decode):
            nb = (context_lens[i] + block_size - 1) // block_size
            tables[i, :nb] = torch.tensor(block_tables[i][:nb], dtype=torch.long)
        key_pos = torch.arange(max_blocks * block_size)
        decode_mask = (key_pos[None, :] < torch.tensor(context_lens[:num_decode], dtype=torch.long)[:, None])[
            :, None, None, :
        ]
        prefills: list[PrefillSegment] = []
        start = num_decode
        for qlen, ctx, table in zip(
            query_lens[num_decode:], context_lens[num_decode:], block_tables[num_decode:], strict=True
        ):
            nb = (ctx + block_size - 1) // block_size
            mask = None
            if ctx != qlen:  # earlier tokens are in the cache (chunked prefill, prefix hit or recompute)
                q_pos = torch.arange(ctx - qlen, ctx)
                mask = torch.arange(nb * block_size)[None, :] <= q_pos[:, None]
            prefills.append(PrefillSegment(start, qlen, ctx, torch.tensor(table[:nb], dtype=torch.long), mask))
            start += qlen
        return cls(torch.tensor(slots, dtype=torch.long), num_decode, tables, decode_mask, prefills)


def write_kv(cache: KVCache, k: Tensor, v: Tensor, slot_mapping: Tensor) -> None:
    """Store this step's keys and values (`[T, num_kv_heads, head_dim]`) at their slots."""
    cache.k.view(-1, *cache.k.shape[2:]).index_copy_(0, slot_mapping, k.to(cache.k.dtype))
    cache.v.view(-1, *cache.v.shape[2:]).index_copy_(0, slot_mapping, v.to(cache.v.dtype))


def _gather(cache: Tensor, block_table: Tensor) -> Tensor:
    """Blocks -> `[..., heads, tokens, head_dim]` contiguous keys or values."""
    blocks = cache.index_select(0, block_table.reshape(-1))  # [n, block_size, H, D]
    lead = block_table.shape[:-1]
    return blocks.view(*lead, -1, *cache.shape[2:]).transpose(-3, -2)


def paged_attention(q: Tensor, k: Tensor, v: Tensor, cache: KVCache, meta: AttentionMetadata) -> Tensor:
    """q `[T, H, D]`, k/v `[T, Hkv, D]` for the new tokens; returns `[T, H * D]`."""
    write_kv(cache, k, v, meta.slot_mapping)
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    group = num_heads // num_kv_heads
    out = torch.empty((num_tokens, num_heads, head_dim), dtype=q.dtype, device=q.device)
    nd = meta.num_decode
    if nd and q.is_cuda:  # the Triton kernel reads the block tables directly: no gather of K/V
        lens = meta.decode_mask[:, 0, 0, :].sum(-1).to(q.device)
        tables = meta.decode_block_tables.to(q.device)
        out[:nd] = kernels.paged_attention_decode(q[:nd], cache.k, cache.v, tables, lens, head_dim**-0.5)
    elif nd:
        # Query heads that share a KV head become a group of rows: no repeat of K/V, and the mask is per key only.
        qd = q[:nd].view(nd, num_kv_heads, group, head_dim)
        kd = _gather(cache.k, meta.decode_block_tables).to(q.dtype)
        vd = _gather(cache.v, meta.decode_block_tables).to(q.dtype)
        od = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=meta.decode_mask)
        out[:nd] = od.reshape(nd, num_heads, head_dim)
    for seg in meta.prefills:
        rows = slice(seg.start, seg.start + seg.query_len)
        qs = q[rows].transpose(0, 1).unsqueeze(0)  # [1, H, L, D]
        if seg.mask is None:
            ks = k[rows].transpose(0, 1).unsqueeze(0)
            vs = v[rows].transpose(0, 1).unsqueeze(0)
            os_ = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=True)
        else:
            ks = _gather(cache.k, seg.block_table).unsqueeze(0).to(q.dtype)
            vs = _gather(cache.v, seg.block_table).unsqueeze(0).to(q.dtype)
            os_ = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=seg.mask, enable_gqa=True)
        out[rows] = os_[0].transpose(0, 1)
    return out.view(num_tokens, num_heads * head_dim)
