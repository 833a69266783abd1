"""Fused dequantize-GEMM: y = x @ dequantize(W).T with x in 16-bit and W in int8 or packed int4.

Decode is memory-bound, so the win is reading 1 (int8) or 0.5 (int4) bytes per weight instead of 2 and
dequantizing in registers on the way into the tensor-core dot product. Weight layouts are the ones
`infleet.runtime.quant.formats` produces: int8 [N, K] with a float32 scale per row; int4 packed [N, K // 2]
(even column in the low nibble) with a float32 scale and offset per row and group of K (w = code * scale + offset).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from infleet.runtime.kernels._triton import check_device, dot_in_fp32


def int8_gemm_reference(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    w = weight.to(torch.float32) * scale.to(torch.float32)[:, None]
    return (x.to(torch.float32) @ w.T).to(x.dtype)


def int4_gemm_reference(
    x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, group_size: int
) -> torch.Tensor:
    n = packed.shape[0]
    codes = torch.stack([packed & 0x0F, packed >> 4], dim=-1).reshape(n, -1, group_size).to(torch.float32)
    w = (codes * scale.to(torch.float32)[..., None] + offset.to(torch.float32)[..., None]).reshape(n, -1)
    return (x.to(torch.float32) @ w.T).to(x.dtype)


@triton.jit
def _int8_gemm_kernel(  # type: ignore[no-untyped-def]
    x_ptr, w_ptr, s_ptr, o_ptr, M, N, K,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_om, stride_on,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_F32: tl.constexpr,
):  # fmt: skip
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        x = tl.load(x_ptr + rm[:, None] * stride_xm + kk[None, :] * stride_xk,
                    mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)  # fmt: skip
        w = tl.load(w_ptr + rn[:, None] * stride_wn + kk[None, :] * stride_wk,
                    mask=(rn[:, None] < N) & (kk[None, :] < K), other=0).to(tl.float32)  # fmt: skip
        if DOT_F32:
            acc = tl.dot(x.to(tl.float32), tl.trans(w), acc)
        else:
            acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc)  # int8 codes are exact in 16-bit floats
    scale = tl.load(s_ptr + rn, mask=rn < N, other=0.0)
    acc = acc * scale[None, :]
    tl.store(o_ptr + rm[:, None] * stride_om + rn[None, :] * stride_on, acc.to(o_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))  # fmt: skip


@triton.jit
def _int4_gemm_kernel(  # type: ignore[no-untyped-def]
    x_ptr, p_ptr, s_ptr, f_ptr, o_ptr, M, N, K, GROUP,
    stride_xm, stride_xk, stride_pn, stride_pk, stride_sn, stride_sg, stride_om, stride_on,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_F32: tl.constexpr,
):  # fmt: skip
    # BLOCK_K divides GROUP, so each K tile lies in one group and needs one scale/offset per output row.
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    shift = (rk % 2) * 4
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        x = tl.load(x_ptr + rm[:, None] * stride_xm + kk[None, :] * stride_xk,
                    mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)  # fmt: skip
        packed = tl.load(p_ptr + rn[:, None] * stride_pn + (kk // 2)[None, :] * stride_pk,
                         mask=(rn[:, None] < N) & (kk[None, :] < K), other=0).to(tl.int32)  # fmt: skip
        codes = ((packed >> shift[None, :]) & 0xF).to(tl.float32)
        g = k0 // GROUP
        scale = tl.load(s_ptr + rn * stride_sn + g * stride_sg, mask=rn < N, other=0.0)
        offset = tl.load(f_ptr + rn * stride_sn + g * stride_sg, mask=rn < N, other=0.0)
        w = codes * scale[:, None] + offset[:, None]
        if DOT_F32:
            acc = tl.dot(x.to(tl.float32), tl.trans(w), acc)
        else:
            acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc)
    tl.store(o_ptr + rm[:, None] * stride_om + rn[None, :] * stride_on, acc.to(o_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))  # fmt: skip


def _block_m(m: int) -> int:
    return 16 if m <= 16 else 32 if m <= 32 else 64


def _check_x(x: torch.Tensor, k: int) -> None:
    if x.dim() != 2 or x.shape[1] != k:
        raise ValueError(f"x must be [M, {k}], got {tuple(x.shape)}")
    if x.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"dequant GEMM takes 16-bit activations, got {x.dtype}")


def int8_gemm_triton(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Also takes e4m3 weights (fp8 without hardware fp8 matmul): the kernel widens whatever it loads."""
    n, k = weight.shape
    _check_x(x, k)
    check_device(x, weight, scale)
    out = torch.empty(x.shape[0], n, dtype=x.dtype, device=x.device)
    block_m, block_n, block_k = _block_m(x.shape[0]), 64, 64
    grid = (triton.cdiv(x.shape[0], block_m), triton.cdiv(n, block_n))
    _int8_gemm_kernel[grid](
        x, weight, scale.to(torch.float32).contiguous(), out, x.shape[0], n, k,
        x.stride(0), x.stride(1), weight.stride(0), weight.stride(1), out.stride(0), out.stride(1),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, DOT_F32=dot_in_fp32(x.dtype),
    )  # fmt: skip
    return out


def int4_gemm_triton(
    x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, group_size: int
) -> torch.Tensor:
    n, k = packed.shape[0], packed.shape[1] * 2
    _check_x(x, k)
    check_device(x, packed, scale, offset)
    if group_size < 16 or group_size & (group_size - 1):
        raise ValueError(f"the int4 kernel takes power-of-two group sizes of at least 16, got {group_size}")
    if scale.shape != (n, k // group_size) or offset.shape != scale.shape:
        raise ValueError(f"scale and offset must be [{n}, {k // group_size}], got {tuple(scale.shape)}")
    scale, offset = scale.to(torch.float32).contiguous(), offset.to(torch.float32).contiguous()
    out = torch.empty(x.shape[0], n, dtype=x.dtype, device=x.device)
    block_m, block_n, block_k = _block_m(x.shape[0]), 64, min(group_size, 64)
    grid = (triton.cdiv(x.shape[0], block_m), triton.cdiv(n, block_n))
    _int4_gemm_kernel[grid](
        x, packed, scale, offset, out, x.shape[0], n, k, group_size,
        x.stride(0), x.stride(1), packed.stride(0), packed.stride(1), scale.stride(0), scale.stride(1),
        out.stride(0), out.stride(1),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, DOT_F32=dot_in_fp32(x.dtype),
    )  # fmt: skip
    return out
