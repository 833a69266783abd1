"""Decode attention over the paged KV cache on the CPU, in place: a small C kernel (`cpu_decode_attention.c`).

PyTorch has no CPU kernel that reads a paged cache, so the fallback path gathers every decode sequence's blocks
into a padded copy in every layer and runs SDPA on it; at batch 32 that copy costs as much as attention itself
(docs/performance.md). The C kernel reads the blocks where they are. It is built with infleet's other CPU kernels
(`cpu_native.py`); where it cannot be, or with INFLEET_CPU_ATTENTION=gather, decode attention gathers.
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch import Tensor
from torch.profiler import record_function

from infleet.runtime.kernels import cpu_native
from infleet.runtime.kernels.casts import as_dtype

CACHE_DTYPES = (torch.float32, torch.bfloat16)
PROFILE_NAME = "infleet::cpu_decode_attention"


def available() -> bool:
    """Whether decode attention on the CPU uses this kernel: it loads, and INFLEET_CPU_ATTENTION is not "gather"."""
    return os.environ.get("INFLEET_CPU_ATTENTION", "kernel") != "gather" and cpu_native.library() is not None


def decode_attention(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, context_lens: Tensor, scale: float
) -> Tensor:
    """q `[B, H, D]`, caches `[blocks, block_size, Hkv, D]` (float32 or bfloat16, the same strides),
    block_tables `[B, max_blocks]`, context_lens `[B]` (the current token included) -> `[B, H, D]` in q's dtype.

    Shapes are checked; the tables' values are the block manager's and trusted (1 <= length <= blocks * size)."""
    lib = cpu_native.library()
    if lib is None:
        raise RuntimeError("the CPU decode attention kernel is not available")
    if k_cache.dtype not in CACHE_DTYPES or v_cache.dtype != k_cache.dtype:
        raise ValueError(f"caches must both be float32 or bfloat16, got {k_cache.dtype} and {v_cache.dtype}")
    if k_cache.stride() != v_cache.stride() or k_cache.stride(3) != 1 or k_cache.shape != v_cache.shape:
        raise ValueError("key and value caches must have the same shape and strides, head_dim contiguous")
    batch, heads, dim = q.shape
    if block_tables.shape[0] != batch or context_lens.shape != (batch,) or k_cache.shape[3] != dim:
        raise ValueError(f"want block_tables [{batch}, n], context_lens [{batch}] and caches of head_dim {dim}")
    q32 = as_dtype(q, torch.float32, contiguous=True)  # the engine's tensors already are: no copy, no dispatch
    tables, lens = as_dtype(block_tables, torch.int64, True), as_dtype(context_lens, torch.int64, True)
    out = torch.empty_like(q32)
    block_stride, token_stride, head_stride, _ = k_cache.stride()
    # a profile shows the C kernel by name; outside one the marker is skipped (it costs more than a small call)
    marker = record_function(PROFILE_NAME) if torch.autograd._profiler_enabled() else contextlib.nullcontext()
    with marker:
        status = lib.decode_attention(
            q32.data_ptr(),
            k_cache.data_ptr(),
            v_cache.data_ptr(),
            int(k_cache.dtype == torch.bfloat16),
            tables.data_ptr(),
            lens.data_ptr(),
            out.data_ptr(),
            batch,
            heads,
            k_cache.shape[2],
            dim,
            k_cache.shape[1],
            tables.shape[1],
            block_stride,
            token_stride,
            head_stride,
            scale,
            torch.get_num_threads(),
        )
    if status:
        raise RuntimeError(f"CPU decode attention failed for q {tuple(q.shape)}, cache {tuple(k_cache.shape)}")
    return as_dtype(out, q.dtype)
