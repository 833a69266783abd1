"""RMSNorm (+ residual), SiLU-and-multiply and RoPE for bf16 activations on the CPU: `cpu_pointwise.c`.

PyTorch runs each as a chain of small ops (about ten per norm, sixty norms per decode step), whose dispatch costs
more than their arithmetic on a decode step's few rows. One C call each does the same arithmetic (RoPE bit for bit).
Used by `dispatch.py` and the model's RoPE for bf16 tensors on the CPU when infleet's CPU kernels load and
INFLEET_CPU_POINTWISE is not "torch"; float32 activations (the reference) keep PyTorch's ops.
"""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

from infleet.runtime.kernels import cpu_native
from infleet.runtime.kernels.casts import as_dtype


@functools.cache
def _enabled() -> bool:
    """The library loaded and INFLEET_CPU_POINTWISE is not "torch" (read once: these run hundreds of times a step)."""
    return os.environ.get("INFLEET_CPU_POINTWISE", "kernel") != "torch" and cpu_native.library() is not None


def available(x: Tensor) -> bool:
    """Whether `x` takes these kernels: bf16 on the CPU, with the kernels enabled."""
    return x.dtype == torch.bfloat16 and x.device.type == "cpu" and _enabled()


def _library() -> object:
    lib = cpu_native.library()
    if lib is None:
        raise RuntimeError("infleet's CPU kernels are not available")
    return lib


def rms_norm(x: Tensor, weight: Tensor, eps: float, residual: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """(norm(x + residual) * weight, x + residual) for bf16 x [..., D], as `rms_norm_reference` computes them."""
    dim = x.shape[-1]
    if x.dtype != torch.bfloat16 or weight.shape != (dim,) or (residual is not None and residual.shape != x.shape):
        raise ValueError(f"want bf16 x [..., {dim}], weight [{dim}] and a residual like x; got {tuple(x.shape)}")
    x, w = x.contiguous(), as_dtype(weight, torch.bfloat16, contiguous=True)  # a bf16 model's weight as it is
    r = as_dtype(residual, torch.bfloat16, contiguous=True) if residual is not None else None
    out = torch.empty_like(x)
    summed = torch.empty_like(x) if r is not None else None
    status = _library().rms_norm_bf16(  # type: ignore[attr-defined]
        x.data_ptr(), r.data_ptr() if r is not None else None, w.data_ptr(), out.data_ptr(),
        summed.data_ptr() if summed is not None else None, x.numel() // dim, dim, eps, torch.get_num_threads(),
    )  # fmt: skip
    if status:
        raise RuntimeError(f"the CPU RMSNorm refused x {tuple(x.shape)}")
    return out, summed


def silu_and_mul(gate: Tensor, up: Tensor) -> Tensor:
    """silu(gate) * up for bf16 [..., I] halves of one [..., 2I] tensor (or any two with the same row stride)."""
    if gate.dtype != torch.bfloat16 or up.dtype != gate.dtype or gate.shape != up.shape:
        raise ValueError(f"want bf16 gate and up of one shape; got {gate.dtype} {tuple(gate.shape)}, {up.dtype}")
    dim = gate.shape[-1]
    g, u = gate.reshape(-1, dim), up.reshape(-1, dim)
    if g.stride(1) != 1 or u.stride(1) != 1 or g.stride(0) != u.stride(0):
        g, u = g.contiguous(), u.contiguous()
    out = torch.empty(gate.shape, dtype=torch.bfloat16)
    status = _library().silu_and_mul_bf16(  # type: ignore[attr-defined]
        g.data_ptr(), u.data_ptr(), out.data_ptr(), g.shape[0], dim, g.stride(0), torch.get_num_threads()
    )
    if status:
        raise RuntimeError(f"the CPU SiLU-and-multiply refused {tuple(gate.shape)}")
    return out


def rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [T, H, D] (rows any stride apart, heads contiguous) rotated by bf16 tables cos, sin [T, 1, D] (sin negated
    on the first half): `RopeTables.rotate`'s bits, into a new contiguous [T, H, D]."""
    t, heads, dim = x.shape
    if x.dtype != torch.bfloat16 or cos.dtype != x.dtype or sin.dtype != x.dtype or cos.shape != (t, 1, dim):
        raise ValueError(f"want bf16 x [T, H, D] and bf16 tables [T, 1, D]; got {tuple(x.shape)}, {tuple(cos.shape)}")
    if x.stride(2) != 1 or x.stride(1) != dim:
        x = x.contiguous()
    cos, sin = cos.contiguous(), sin.contiguous()
    out = torch.empty(t, heads, dim, dtype=torch.bfloat16)
    status = _library().rope_bf16(  # type: ignore[attr-defined]
        x.data_ptr(), x.stride(0), cos.data_ptr(), sin.data_ptr(), out.data_ptr(), t, heads, dim,
        torch.get_num_threads(),
    )  # fmt: skip
    if status:
        raise RuntimeError(f"the CPU RoPE refused x {tuple(x.shape)}")
    return out
