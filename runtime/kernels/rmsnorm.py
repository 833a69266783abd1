"""Fused RMSNorm with the residual add: one read of x and the residual, one write of each result.

`add_rms_norm(x, residual, w)` returns (rmsnorm(x + residual) * w, x + residual), the pre-norm transformer's
"add the block output to the stream, normalise for the next block" step; with no residual it is plain RMSNorm.
Sums and the normalisation are computed in float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from infleet.runtime.kernels._triton import check_device
from infleet.runtime.kernels.casts import as_dtype


def rms_norm_reference(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    h = as_dtype(x, torch.float32)
    if residual is not None:
        h = h + as_dtype(residual, torch.float32)
    normed = h * torch.rsqrt(h.pow(2).mean(dim=-1, keepdim=True) + eps) * as_dtype(weight, torch.float32)
    return as_dtype(normed, x.dtype), (as_dtype(h, x.dtype) if residual is not None else None)


@triton.jit
def _rms_norm_kernel(  # type: ignore[no-untyped-def]
    x_ptr, r_ptr, w_ptr, o_ptr, ro_ptr, D, stride_x, stride_r, stride_o, stride_ro, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    h = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        h += tl.load(r_ptr + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(ro_ptr + row * stride_ro + cols, h.to(ro_ptr.dtype.element_ty), mask=mask)
    inv = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / D + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(o_ptr + row * stride_o + cols, (h * inv * w).to(o_ptr.dtype.element_ty), mask=mask)


def rms_norm_triton(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    d = x.shape[-1]
    if weight.shape != (d,):
        raise ValueError(f"weight must be [{d}], got {tuple(weight.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual must match x {tuple(x.shape)}, got {tuple(residual.shape)}")
    check_device(x, weight)
    x2 = x.reshape(-1, d).contiguous()
    r2 = residual.reshape(-1, d).contiguous() if residual is not None else x2
    out = torch.empty_like(x2)
    res_out = torch.empty_like(x2) if residual is not None else out
    if x2.shape[0]:
        _rms_norm_kernel[(x2.shape[0],)](
            x2, r2, weight, out, res_out, d, x2.stride(0), r2.stride(0), out.stride(0), res_out.stride(0), eps,
            HAS_RESIDUAL=residual is not None, BLOCK_D=triton.next_power_of_2(d),
        )  # fmt: skip
    return out.view(x.shape), (res_out.view(x.shape) if residual is not None else None)
