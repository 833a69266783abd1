"""The tiled prefill kernel against its row-by-row reference: chunks after cached context, fresh prompts split over
several tiles, GQA, a block table that is not in order, float32 and bf16."""

from __future__ import annotations

import pytest
import torch

from infleet.runtime.kernels.prefill_attention import prefill_attention_reference, prefill_attention_triton


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_prefill_kernel_matches_reference(dtype: torch.dtype, tol: float) -> None:
    torch.manual_seed(0)
    blocks, block_size, kv_heads, head_dim, heads = 12, 16, 2, 16, 4
    k = torch.randn(blocks, block_size, kv_heads, head_dim).to(dtype)
    v = torch.randn(blocks, block_size, kv_heads, head_dim).to(dtype)
    q = torch.randn(45, heads, head_dim).to(dtype)
    tables = torch.tensor([[3, 9, 7, 0], [1, 2, 11, 0]], dtype=torch.int32)
    # sequence 0: 20 rows at positions 30..49 (a chunk after 30 cached tokens); sequence 1: a fresh 25-token prompt
    tiles = torch.tensor([[0, 16, 0, 30], [16, 4, 0, 46], [20, 16, 1, 0], [36, 9, 1, 16]], dtype=torch.int32)
    got = prefill_attention_triton(q, k, v, tables, tiles, head_dim**-0.5)
    want = prefill_attention_reference(q, k, v, tables, tiles, head_dim**-0.5)
    assert torch.allclose(got.float(), want.float(), atol=tol, rtol=tol)


def test_prefill_kernel_writes_only_its_tiles_rows() -> None:
    k = torch.randn(4, 16, 1, 16)
    q = torch.randn(6, 2, 16)
    out = torch.full_like(q, 7.0)
    tiles = torch.tensor([[2, 3, 0, 0]], dtype=torch.int32)
    prefill_attention_triton(q, k, k, torch.tensor([[0, 1]], dtype=torch.int32), tiles, 0.25, out)
    assert (out[:2] == 7.0).all() and (out[5:] == 7.0).all() and not (out[2:5] == 7.0).any()
