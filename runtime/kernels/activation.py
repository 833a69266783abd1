"""Fused SiLU-and-multiply, SwiGLU's gate: silu(gate) * up in one pass instead of three elementwise kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from infleet.runtime.kernels._triton import check_device
from infleet.runtime.kernels.casts import as_dtype


def silu_and_mul_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return as_dtype(F.silu(as_dtype(gate, torch.float32)) * as_dtype(up, torch.float32), gate.dtype)


@triton.jit
def _silu_and_mul_kernel(g_ptr, u_ptr, o_ptr, n, BLOCK: tl.constexpr):  # type: ignore[no-untyped-def]
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(o_ptr + offs, (g * tl.sigmoid(g) * u).to(o_ptr.dtype.element_ty), mask=mask)


def silu_and_mul_triton(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    if gate.shape != up.shape:
        raise ValueError(f"gate and up must have one shape, got {tuple(gate.shape)} and {tuple(up.shape)}")
    check_device(gate, up)
    gate, up = gate.contiguous(), up.contiguous()
    out = torch.empty_like(gate)
    n = gate.numel()
    block = 1024
    if n:
        _silu_and_mul_kernel[(triton.cdiv(n, block),)](gate, up, out, n, BLOCK=block)
    return out
