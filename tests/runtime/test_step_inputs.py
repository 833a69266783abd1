"""The step's metadata, built with tensor ops, equals the per-token Python builder it replaced, on random batches:
decodes, fresh prompts, chunked prefill, prefix hits and speculative decodes (k+1 query tokens), mixed."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infleet.runtime.kernels._triton import PREFILL_TILE_ROWS
from infleet.runtime.model.attention import (
    ROW_ATTENTION_MAX_ROWS,
    AttentionMetadata,
    PrefillSegment,
    RowAttention,
    StepInputs,
)


def reference_build(
    input_ids: list[int],
    query_lens: list[int],
    context_lens: list[int],
    block_tables: list[list[int]],
    block_size: int,
    sample_rows: list[int],
) -> StepInputs:
    """The previous builder: positions, slots and tiles from a per-token Python loop (CPU only)."""
    num_seqs = len(query_lens)
    seq_blocks = [-(-c // block_size) for c in context_lens]
    max_blocks = max(seq_blocks, default=0)
    positions: list[int] = []
    slots: list[int] = []
    tiles: list[int] = []
    tables: list[int] = []
    for i, (qlen, ctx, table, nb) in enumerate(zip(query_lens, context_lens, block_tables, seq_blocks, strict=True)):
        if qlen > 1 or tiles:
            for first in range(0, qlen, PREFILL_TILE_ROWS):
                tiles.extend((len(positions) + first, min(PREFILL_TILE_ROWS, qlen - first), i, ctx - qlen + first))
        for pos in range(ctx - qlen, ctx):
            positions.append(pos)
            slots.append(table[pos // block_size] * block_size + pos % block_size)
        tables.extend(table[:nb])
        tables.extend([0] * (max_blocks - nb))
    t = len(positions)
    num_ids = len(input_ids)
    flat = torch.tensor(
        [*input_ids, *positions, *slots, *tiles, *context_lens, *sample_rows, *tables], dtype=torch.long
    )
    parts = flat.split([num_ids, t, t, len(tiles), num_seqs, len(sample_rows), num_seqs * max_blocks])
    ids, pos, slot_mapping, tile_flat, seq_lens, samples, seq_tables = parts
    seq_tables = seq_tables.view(num_seqs, max_blocks)
    num_decode = 0
    while num_decode < num_seqs and query_lens[num_decode] == 1:
        num_decode += 1
    decode_blocks = max(seq_blocks[:num_decode], default=0)
    key_pos = torch.arange(max_blocks * block_size)
    decode_mask = (key_pos[None, : decode_blocks * block_size] < seq_lens[:num_decode, None])[:, None, None, :]
    prefills: list[PrefillSegment] = []
    row_index, row_seqs, row_lens = list(range(num_decode)), list(range(num_decode)), context_lens[:num_decode]
    start = num_decode
    for i in range(num_decode, num_seqs):
        qlen, ctx, nb = query_lens[i], context_lens[i], seq_blocks[i]
        mask = None
        if ctx != qlen:
            mask = key_pos[None, : nb * block_size] <= pos[start : start + qlen, None]
        by_rows = mask is not None and qlen <= ROW_ATTENTION_MAX_ROWS
        if by_rows:  # row by row: each attends to its position + 1 tokens
            row_index += range(start, start + qlen)
            row_seqs += [i] * qlen
            row_lens += range(ctx - qlen + 1, ctx + 1)
        prefills.append(PrefillSegment(start, qlen, ctx, seq_tables[i, :nb], mask, by_rows))
        start += qlen
    if len(row_index) > num_decode:
        rows = RowAttention(torch.tensor(row_index), seq_tables[row_seqs], torch.tensor(row_lens))
    else:
        rows = RowAttention(None, seq_tables[:num_decode, :decode_blocks], seq_lens[:num_decode])
    meta = AttentionMetadata(
        slot_mapping,
        num_decode,
        seq_tables[:num_decode, :decode_blocks],
        decode_mask,
        rows,
        prefills,
        seq_tables.to(torch.int32),
        seq_lens.to(torch.int32),
        tile_flat.view(-1, 4).to(torch.int32),
    )
    return StepInputs(ids, pos, samples, meta)


def assert_same(got: Any, want: Any, where: str = "step") -> None:
    """Field by field, tensors by value, shape and dtype."""
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor), where
        assert got.dtype == want.dtype, f"{where}: {got.dtype} != {want.dtype}"
        assert got.shape == want.shape, f"{where}: {tuple(got.shape)} != {tuple(want.shape)}"
        assert torch.equal(got, want), f"{where}: {got} != {want}"
    elif dataclasses.is_dataclass(want):
        for field in dataclasses.fields(want):
            assert_same(getattr(got, field.name), getattr(want, field.name), f"{where}.{field.name}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{where}[{i}]")
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


# input ids, query lens, context lens, block tables, block size, sample rows
Batch = tuple[list[int], list[int], list[int], list[list[int]], int, list[int]]
KINDS = ("fresh", "chunk", "prefix_hit", "speculative")


@st.composite
def batches(draw: st.DrawFn) -> Batch:
    """A scheduled step as the model runner lays it out: single-token decodes first, then the rest."""
    block_size = draw(st.sampled_from([1, 4, 16]))
    num_decode = draw(st.integers(0, 6))
    kinds = draw(st.lists(st.sampled_from(KINDS), max_size=4))
    query_lens: list[int] = []
    context_lens: list[int] = []
    for _ in range(num_decode):
        query_lens.append(1)
        context_lens.append(draw(st.integers(1, 80)))
    for kind in kinds:
        if kind == "fresh":
            q = draw(st.integers(2, 70))
            ctx = q
        elif kind == "speculative":  # the last token plus k drafted ones, after a long context
            q = draw(st.integers(2, 6))
            ctx = q + draw(st.integers(1, 80))
        else:  # a later chunk of a prompt, or the new part of a prompt whose prefix is cached
            q = draw(st.integers(2, 50))
            ctx = q + draw(st.integers(1, 90) if kind == "chunk" else st.sampled_from([block_size, 4 * block_size]))
        query_lens.append(q)
        context_lens.append(ctx)
    # Tables may hold more blocks than the context needs (blocks reserved ahead): only the first ones count.
    sizes = [-(-c // block_size) + draw(st.integers(0, 2)) for c in context_lens]
    free = iter(draw(st.randoms(use_true_random=False)).sample(range(4000), sum(sizes)))
    tables = [[next(free) for _ in range(n)] for n in sizes]
    t = sum(query_lens)
    input_ids = draw(st.lists(st.integers(0, 49_151), min_size=t, max_size=t))
    sample_rows = sorted(draw(st.sets(st.integers(0, max(t - 1, 0)), max_size=t))) if t else []
    return input_ids, query_lens, context_lens, tables, block_size, sample_rows


@settings(max_examples=300, deadline=None)
@given(batches())
def test_builder_matches_reference(batch: Batch) -> None:
    input_ids, query_lens, context_lens, tables, block_size, sample_rows = batch
    got = StepInputs.build(input_ids, query_lens, context_lens, tables, block_size, sample_rows)
    want = reference_build(input_ids, query_lens, context_lens, tables, block_size, sample_rows)
    assert_same(got, want)


def test_speculative_decode_rows() -> None:
    """A decode carrying 3 drafted tokens after 37 cached ones: positions 37..40, slots through its table, one tile."""
    step = StepInputs.build([5, 6, 7, 8, 9], [1, 4], [10, 41], [[3], [7, 2, 9]], 16, [0, 1, 2, 3, 4])
    assert step.positions.tolist() == [9, 37, 38, 39, 40]
    assert step.meta.slot_mapping.tolist() == [3 * 16 + 9, 9 * 16 + 5, 9 * 16 + 6, 9 * 16 + 7, 9 * 16 + 8]
    assert step.meta.prefill_tiles.tolist() == [[1, 4, 1, 37]]
    assert step.meta.num_decode == 1
