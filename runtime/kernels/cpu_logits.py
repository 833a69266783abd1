"""Logits through an int8 LM head on the CPU in float32, reading the table's int8 bytes once: `cpu_int8_logits.c`.

PyTorch's path (`dispatch.int8_logits` without it) turns chunks of the table into float32 and multiplies them: at
one or a few rows that writes and reads back four bytes per weight every step, most of a small model's decode step
on some CPUs (docs/performance.md). Every output is one dot product in a fixed order, so a row's logits are the
same in any batch. Built with infleet's other CPU kernels (`cpu_native.py`); INFLEET_CPU_LOGITS=torch (or no
compiler) keeps PyTorch's path.
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch import Tensor
from torch.profiler import record_function

from infleet.runtime.kernels import cpu_native
from infleet.runtime.kernels.casts import as_dtype

PROFILE_NAME = "infleet::cpu_int8_logits"


def available() -> bool:
    """Whether int8 logits on the CPU use this kernel: it loads, and INFLEET_CPU_LOGITS is not "torch"."""
    return os.environ.get("INFLEET_CPU_LOGITS", "kernel") != "torch" and cpu_native.library() is not None


def int8_logits(x: Tensor, weight: Tensor, scale: Tensor) -> Tensor:
    """x `[M, K]` (any float dtype) @ (int8 weight `[V, K]` * scale `[V]`).T -> float32 `[M, V]`."""
    lib = cpu_native.library()
    if lib is None:
        raise RuntimeError("infleet's CPU kernels are not available")
    if x.dim() != 2 or weight.dim() != 2 or weight.shape[1] != x.shape[1] or scale.shape != (weight.shape[0],):
        raise ValueError(f"want x [M, K], weight [V, K], scale [V]; got {x.shape}, {weight.shape}, {scale.shape}")
    if weight.dtype != torch.int8:
        raise ValueError(f"the weight must be int8, got {weight.dtype}")
    x32 = as_dtype(x, torch.float32, contiguous=True)
    w = weight if weight.is_contiguous() else weight.contiguous()
    s = as_dtype(scale, torch.float32, contiguous=True)
    out = torch.empty(x.shape[0], weight.shape[0], dtype=torch.float32)
    marker = record_function(PROFILE_NAME) if torch.autograd._profiler_enabled() else contextlib.nullcontext()
    with marker:
        status = lib.int8_logits(
            x32.data_ptr(), w.data_ptr(), s.data_ptr(), out.data_ptr(), *x.shape[:1], *weight.shape,
            torch.get_num_threads(),
        )  # fmt: skip
    if status:
        raise RuntimeError(f"CPU int8 logits failed for x {tuple(x.shape)}, weight {tuple(weight.shape)}")
    return out
