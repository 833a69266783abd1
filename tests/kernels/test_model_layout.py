"""The paged-attention kernel reads the model's own KV cache and attention metadata and agrees with its torch path."""

from __future__ import annotations

import torch

from infleet.runtime.kernels.paged_attention import paged_attention_triton
from infleet.runtime.model.attention import AttentionMetadata, KVCache, paged_attention


def test_kernel_matches_the_models_decode_path() -> None:
    g = torch.Generator().manual_seed(3)
    block_size, kv_heads, heads, d = 4, 2, 6, 16
    cache = KVCache.allocate(12, block_size, kv_heads, d, torch.float32)
    cache.k.copy_(torch.randn(cache.k.shape, generator=g))
    cache.v.copy_(torch.randn(cache.v.shape, generator=g))
    context_lens = [5, 9, 1]
    tables = [[7, 2], [0, 11, 4], [9]]
    meta = AttentionMetadata.build([1, 1, 1], context_lens, tables, block_size)
    q = torch.randn(3, heads, d, generator=g)
    k = torch.randn(3, kv_heads, d, generator=g)
    v = torch.randn(3, kv_heads, d, generator=g)
    expected = paged_attention(q, k, v, cache, meta).view(3, heads, d)  # also writes the new K/V into the cache
    lens = meta.decode_mask[:, 0, 0, :].sum(-1)  # what the model's CUDA branch passes
    assert lens.tolist() == context_lens
    out = paged_attention_triton(q, cache.k, cache.v, meta.decode_block_tables, lens, d**-0.5)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
