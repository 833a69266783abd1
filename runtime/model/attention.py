"""Paged attention on a flattened batch: write new K/V into cache slots, then attend over each sequence's blocks.

A step's batch is laid out as: first `num_decode` single-token decodes, then prefill chunks one after another.
The step's per-sequence values (token ids, query and context lengths, block tables, sampled rows) are packed on the
host into one int64 tensor and copied to the device once (`StepInputs.build`); positions, slots and prefill tiles
are derived there with tensor ops, once per step, and every layer then reads the same metadata.

Two paths read the cache:
- Triton (`--kernels triton`, or "auto" on CUDA): per layer one decode launch (one program per sequence and KV
  head, reading the blocks in place through the block table) and one tiled prefill launch (flash-style: tiles of up
  to 16 rows of a chunk attend causally to their sequence's blocks in place; fresh prompts, chunks after earlier
  chunks and prefix hits are the same case, since the chunk's own K/V are written to the cache first).
- CPU: decodes, and the rows of short chunks over cached context (speculative verifies), through a small C kernel
  that reads each sequence's blocks in place, one row at a time (`kernels/cpu_attention.py`; without it, or with
  INFLEET_CPU_ATTENTION=gather, decodes take one padded SDPA call over gathered blocks); other prefill chunks one
  by one through SDPA, since each is already a large matmul.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from infleet.runtime.kernels import cpu_attention
from infleet.runtime.kernels import dispatch as kernels
from infleet.runtime.kernels._triton import PREFILL_TILE_ROWS


@dataclass
class KVCache:
    """One layer's cache: `[num_blocks, block_size, num_kv_heads, head_dim]` for keys and for values."""

    k: Tensor
    v: Tensor

    @classmethod
    def allocate(
        cls,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> KVCache:
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
        return cls(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))


# A chunk over cached context of at most this many rows (a speculative verify: the last token and up to 8 drafts)
# is attended row by row by the CPU kernel, like decodes: a verified token then computes as its decode would have.
ROW_ATTENTION_MAX_ROWS = 16


@dataclass
class PrefillSegment:
    start: int  # first row of this chunk in the flattened batch
    query_len: int
    context_len: int  # tokens in the cache after this step, including the chunk
    block_table: Tensor  # [num_blocks] block ids covering context_len
    mask: Tensor | None  # [query_len, padded context] True where attending is allowed; None: fresh causal prompt
    by_rows: bool = False  # attended row by row with the decodes where the CPU kernel runs (ROW_ATTENTION_MAX_ROWS)


@dataclass
class RowAttention:
    """The rows the CPU kernel attends one at a time: the decodes, then the rows of short chunks over cached context.
    Each row attends to the first `lens[r]` tokens of its sequence (its own position included)."""

    index: Tensor | None  # [R] rows of the flattened batch; None: rows 0..R-1 (decodes only)
    tables: Tensor  # [R, max_blocks] int64, each row's sequence's block table
    lens: Tensor  # [R] int64


@dataclass
class AttentionMetadata:
    slot_mapping: Tensor  # [T] flat cache slot each new token's K/V goes to
    num_decode: int
    decode_block_tables: Tensor  # [num_decode, max_blocks], padded with block 0
    decode_mask: Tensor  # [num_decode, 1, 1, max_blocks * block_size] True for real keys
    rows: RowAttention
    prefills: list[PrefillSegment]
    block_tables: Tensor  # [num_seqs, max_blocks] int32, the Triton kernels' input (decodes first)
    context_lens: Tensor  # [num_seqs] int32
    prefill_tiles: Tensor  # [n, 4] int32 (first row, rows, sequence, first row's position): see prefill_attention

    @classmethod
    def build(
        cls,
        query_lens: list[int],
        context_lens: list[int],
        block_tables: list[list[int]],
        block_size: int,
        device: torch.device | str = "cpu",
    ) -> AttentionMetadata:
        """Sequences whose query length is 1 must come first (the engine orders the batch that way)."""
        return StepInputs.build([], query_lens, context_lens, block_tables, block_size, [], device).meta


@dataclass
class StepInputs:
    """One step's tensors on the device, from a single host-to-device copy."""

    input_ids: Tensor  # [T]
    positions: Tensor  # [T]
    sample_rows: Tensor  # [S] rows whose hidden state is sampled
    meta: AttentionMetadata

    @classmethod
    def build(
        cls,
        input_ids: list[int],
        query_lens: list[int],
        context_lens: list[int],
        block_tables: list[list[int]],
        block_size: int,
        sample_rows: list[int],
        device: torch.device | str = "cpu",
    ) -> StepInputs:
        """`input_ids` may be empty (metadata only). Decodes (query length 1) must come first.

        Only per-sequence values cross to the device; positions, slots and prefill tiles are derived there with a
        few tensor ops, so the host does no per-token work and the step still makes one copy."""
        num_seqs, t, num_ids = len(query_lens), sum(query_lens), len(input_ids)
        seq_blocks = [-(-c // block_size) for c in context_lens]
        max_blocks = max(seq_blocks, default=0)
        num_decode = 0
        while num_decode < num_seqs and query_lens[num_decode] == 1:
            num_decode += 1
        num_tiles = sum(-(-q // PREFILL_TILE_ROWS) for q in query_lens[num_decode:])
        tables: list[int] = []
        for table, nb in zip(block_tables, seq_blocks, strict=True):
            tables.extend(table[:nb])
            tables.extend([0] * (max_blocks - nb))
        host = torch.tensor([*input_ids, *query_lens, *context_lens, *sample_rows, *tables], dtype=torch.long)
        device = torch.device(device)
        if device.type == "cuda":
            host = host.pin_memory()
        flat = host.to(device, non_blocking=True)  # the step's one host-to-device copy
        ids, qlens, seq_lens, samples, seq_tables = flat.split(
            [num_ids, num_seqs, num_seqs, len(sample_rows), num_seqs * max_blocks]
        )
        seq_tables = seq_tables.view(num_seqs, max_blocks)

        # Token -> its sequence; a token's position counts on from the sequence's first new position.
        seq_ids = torch.arange(num_seqs, device=device)
        row_starts = qlens.cumsum(0) - qlens
        first_pos = seq_lens - qlens
        token_seq = seq_ids.repeat_interleave(qlens, output_size=t)
        pos = torch.arange(t, device=device) + (first_pos - row_starts)[token_seq]
        slot_mapping = seq_tables[token_seq, pos // block_size] * block_size + pos % block_size

        # Prefill chunks (everything after the decodes) in tiles of PREFILL_TILE_ROWS rows.
        tiles_per_seq = (qlens[num_decode:] + PREFILL_TILE_ROWS - 1) // PREFILL_TILE_ROWS
        tile_seq = seq_ids[num_decode:].repeat_interleave(tiles_per_seq, output_size=num_tiles)
        tile_base = (tiles_per_seq.cumsum(0) - tiles_per_seq).repeat_interleave(tiles_per_seq, output_size=num_tiles)
        offset = (torch.arange(num_tiles, device=device) - tile_base) * PREFILL_TILE_ROWS
        tile_rows = (qlens[tile_seq] - offset).clamp(max=PREFILL_TILE_ROWS)
        tiles = torch.stack((row_starts[tile_seq] + offset, tile_rows, tile_seq, first_pos[tile_seq] + offset), dim=1)

        decode_blocks = max(seq_blocks[:num_decode], default=0)
        decode_tables = seq_tables[:num_decode, :decode_blocks].contiguous()
        key_pos = torch.arange(max_blocks * block_size, device=device)
        decode_mask = (key_pos[None, : decode_blocks * block_size] < seq_lens[:num_decode, None])[:, None, None, :]
        prefills: list[PrefillSegment] = []
        row_ranges: list[Tensor] = []  # the rows of the chunks attended row by row
        start = num_decode
        for i in range(num_decode, num_seqs):
            qlen, ctx, nb = query_lens[i], context_lens[i], seq_blocks[i]
            mask = None
            if ctx != qlen:  # earlier tokens are in the cache (chunked prefill, prefix hit or recompute)
                mask = key_pos[None, : nb * block_size] <= pos[start : start + qlen, None]
            by_rows = mask is not None and qlen <= ROW_ATTENTION_MAX_ROWS
            if by_rows:
                row_ranges.append(torch.arange(start, start + qlen, device=device))
            prefills.append(PrefillSegment(start, qlen, ctx, seq_tables[i, :nb], mask, by_rows))
            start += qlen
        if row_ranges:  # each row attends to its position + 1 tokens of its sequence
            row_index = torch.cat([torch.arange(num_decode, device=device), *row_ranges])
            rows = RowAttention(row_index, seq_tables[token_seq[row_index]], pos[row_index] + 1)
        else:
            rows = RowAttention(None, decode_tables, seq_lens[:num_decode])
        meta = AttentionMetadata(
            slot_mapping,
            num_decode,
            decode_tables,
            decode_mask,
            rows,
            prefills,
            seq_tables.to(torch.int32),
            seq_lens.to(torch.int32),
            tiles.to(torch.int32),
        )
        return cls(ids, pos, samples, meta)


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
    if kernels.use_triton(q):  # the paged kernels read the cache in place
        nd, scale = meta.num_decode, head_dim**-0.5
        out = torch.empty_like(q)
        if nd:
            out[:nd] = kernels.paged_attention_decode(
                q[:nd], cache.k, cache.v, meta.block_tables[:nd], meta.context_lens[:nd], scale
            )
        if nd < num_tokens:
            kernels.prefill_attention(q, cache.k, cache.v, meta.block_tables, meta.prefill_tiles, scale, out)
        return out.view(num_tokens, num_heads * head_dim)
    num_kv_heads = k.shape[1]
    group = num_heads // num_kv_heads
    nd = meta.num_decode
    prefills = meta.prefills
    native = kernels.cpu_decode_attention(q, cache.k)  # the C kernel reads each sequence's blocks in place
    rows, scale = meta.rows, head_dim**-0.5
    if native and rows.index is None and nd == num_tokens:  # a pure decode step: the kernel's output is the answer
        out = cpu_attention.decode_attention(q, cache.k, cache.v, rows.tables, rows.lens, scale)
        return out.view(num_tokens, num_heads * head_dim)
    out = torch.empty((num_tokens, num_heads, head_dim), dtype=q.dtype, device=q.device)
    if native:
        if rows.index is None and nd:
            out[:nd] = cpu_attention.decode_attention(q[:nd], cache.k, cache.v, rows.tables, rows.lens, scale)
        elif rows.index is not None:
            out[rows.index] = cpu_attention.decode_attention(
                q[rows.index], cache.k, cache.v, rows.tables, rows.lens, scale
            )
            prefills = [seg for seg in prefills if not seg.by_rows]
    elif nd:
        # Query heads that share a KV head become a group of rows: no repeat of K/V, and the mask is per key only.
        qd = q[:nd].view(nd, num_kv_heads, group, head_dim)
        kd = _gather(cache.k, meta.decode_block_tables).to(q.dtype)
        vd = _gather(cache.v, meta.decode_block_tables).to(q.dtype)
        od = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=meta.decode_mask)
        out[:nd] = od.reshape(nd, num_heads, head_dim)
    for seg in prefills:
        span = slice(seg.start, seg.start + seg.query_len)
        qs = q[span].transpose(0, 1).unsqueeze(0)  # [1, H, L, D]
        if seg.mask is None:
            ks = k[span].transpose(0, 1).unsqueeze(0)
            vs = v[span].transpose(0, 1).unsqueeze(0)
            os_ = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=True)
        else:
            ks = _gather(cache.k, seg.block_table).unsqueeze(0).to(q.dtype)
            vs = _gather(cache.v, seg.block_table).unsqueeze(0).to(q.dtype)
            os_ = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=seg.mask, enable_gqa=True)
        out[span] = os_[0].transpose(0, 1)
    return out.view(num_tokens, num_heads * head_dim)
