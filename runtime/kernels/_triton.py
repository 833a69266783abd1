"""Small facts about how Triton runs here, shared by the kernel modules."""

from __future__ import annotations

import os

import torch

PREFILL_TILE_ROWS = 16  # rows of a prefill chunk per program of the Triton prefill kernel (its BLOCK_M)


def interpreting() -> bool:
    """True under TRITON_INTERPRET=1, where kernels run on CPU tensors through numpy (the test suite's mode)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def dot_in_fp32(dtype: torch.dtype) -> bool:
    """Whether tl.dot operands must be widened to fp32 first.

    Triton 3.9's interpreter computes bf16 tl.dot (and int -> bf16 casts) wrongly, so under it bf16 operands go
    through fp32; compiled kernels keep 16-bit operands for the tensor cores.
    """
    return interpreting() and dtype == torch.bfloat16


def check_device(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if not t.is_cuda and not interpreting():
            raise RuntimeError("Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 to run them on CPU)")
