"""Paged decode attention matches the reference and plain attention, across block sizes, GQA groups and lengths."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infleet.runtime.kernels import paged_attention as P


def _paged_case(
    g: torch.Generator, lens: list[int], kv_heads: int, group: int, d: int, block_size: int, dtype: torch.dtype
) -> tuple[torch.Tensor, ...]:
    """Scatter each sequence's K/V over shuffled blocks of a shared pool, the way a block allocator would."""
    per_seq = [(n + block_size - 1) // block_size for n in lens]
    num_blocks = sum(per_seq) + 3
    order = torch.randperm(num_blocks, generator=g)
    tables = torch.zeros(len(lens), max(max(per_seq), 1), dtype=torch.int32)
    k_cache = torch.randn(num_blocks, block_size, kv_heads, d, generator=g).to(dtype)
    v_cache = torch.randn(num_blocks, block_size, kv_heads, d, generator=g).to(dtype)
    used = 0
    for i, nb in enumerate(per_seq):
        tables[i, :nb] = order[used : used + nb].to(torch.int32)
        used += nb
    q = torch.randn(len(lens), kv_heads * group, d, generator=g).to(dtype)
    return q, k_cache, v_cache, tables, torch.tensor(lens, dtype=torch.int32)


@settings(max_examples=8, deadline=None)
@given(
    st.lists(st.integers(1, 70), min_size=1, max_size=4),
    st.integers(1, 3),
    st.sampled_from([1, 3, 4]),
    st.sampled_from([16, 24, 64]),
    st.sampled_from([1, 5, 16]),
    st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    st.integers(0, 2**16),
)
def test_paged_attention_matches_reference(
    lens: list[int], kv_heads: int, group: int, d: int, block_size: int, dtype: torch.dtype, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    q, k_cache, v_cache, tables, context_lens = _paged_case(g, lens, kv_heads, group, d, block_size, dtype)
    scale = d**-0.5
    out = P.paged_attention_triton(q, k_cache, v_cache, tables, context_lens, scale)
    ref = P.paged_attention_reference(q, k_cache, v_cache, tables, context_lens, scale)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)


def test_reference_equals_contiguous_attention() -> None:
    """One sequence in order in blocks 0..n: the same as softmax(qK^T)V with GQA head sharing."""
    g = torch.Generator().manual_seed(0)
    n, block_size, kv_heads, group, d = 37, 16, 3, 3, 64
    k = torch.randn(n, kv_heads, d, generator=g)
    v = torch.randn(n, kv_heads, d, generator=g)
    q = torch.randn(1, kv_heads * group, d, generator=g)
    k_cache = torch.zeros(3, block_size, kv_heads, d)
    v_cache = torch.zeros(3, block_size, kv_heads, d)
    k_cache.view(-1, kv_heads, d)[:n] = k
    v_cache.view(-1, kv_heads, d)[:n] = v
    tables = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    lens = torch.tensor([n], dtype=torch.int32)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1)[:, :, None, :].transpose(0, 1),  # [1, H, 1, d]
        k.repeat_interleave(group, dim=1).transpose(0, 1)[None],  # [1, H, n, d]
        v.repeat_interleave(group, dim=1).transpose(0, 1)[None],
    )[0, :, 0, :]
    for fn in (P.paged_attention_reference, P.paged_attention_triton):
        torch.testing.assert_close(fn(q, k_cache, v_cache, tables, lens, d**-0.5)[0], expected, atol=1e-5, rtol=1e-5)


def test_layer_view_of_a_stacked_cache() -> None:
    """A [layers, blocks, ...] cache passes one layer's strided view without a copy."""
    g = torch.Generator().manual_seed(1)
    q, k_cache, v_cache, tables, lens = _paged_case(g, [20, 9], 2, 2, 32, 8, torch.float32)
    stacked_k = torch.stack([torch.zeros_like(k_cache), k_cache])
    stacked_v = torch.stack([torch.zeros_like(v_cache), v_cache])
    out = P.paged_attention_triton(q, stacked_k[1], stacked_v[1], tables, lens, 0.2)
    torch.testing.assert_close(out, P.paged_attention_reference(q, k_cache, v_cache, tables, lens, 0.2))


def test_rejects_mismatched_heads() -> None:
    q = torch.randn(1, 4, 16)
    cache = torch.randn(2, 4, 3, 16)
    try:
        P.paged_attention_reference(q, cache, cache, torch.zeros(1, 2, dtype=torch.int32), torch.tensor([3]), 1.0)
    except ValueError as e:
        assert "KV heads" in str(e)
    else:
        raise AssertionError("4 query heads over 3 KV heads were accepted")
