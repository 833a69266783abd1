"""The bf16, int8 and int4 tiers' linear layers on the CPU with AVX512-BF16 dot products: `cpu_woq_gemm.c`.

PyTorch's CPU weight-only kernels (`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`) compute one activation row
at a time: their time grows with the rows, so at 32 decode sequences they took most of a step (docs/performance.md).
This kernel turns each block of 16 output channels into bf16 once per call and runs every row over it, and every
output is summed in one fixed order, so a row computes alike in any batch and prompt rows can take the same kernel.
bf16 weights are packed as the very pairs the dot product reads, so nothing is converted: a batch-1 step reads them
at close to the memory's speed, where PyTorch's bf16 `mm` with one row ran at a third of it. Weights are repacked at
load (`pack_bf16`, `pack_int8`, `pack_int4`), in the same number of bytes. Built with infleet's other CPU kernels
(`cpu_native.py`); used when the CPU has AVX512-BF16 and INFLEET_CPU_WOQ is not "torch", else PyTorch's kernels.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os

import torch
from torch import Tensor
from torch.profiler import record_function

from infleet.runtime.kernels import cpu_native
from infleet.runtime.kernels.casts import as_dtype

LANES = 16  # output channels per block (the kernel's LANES)
PAIRS = 8  # the input dimension and int4 groups must be multiples of this (2 x the kernel's CHAINS)
PROFILE_BF16, PROFILE_INT8, PROFILE_INT4 = "infleet::cpu_bf16_gemm", "infleet::cpu_int8_gemm", "infleet::cpu_int4_gemm"


@functools.cache
def _cpu_has_bf16_dot() -> bool:
    lib = cpu_native.library()
    return lib is not None and bool(lib.woq_available())


def available() -> bool:
    """Whether the int8/int4 layers on the CPU use this kernel: it loads, the CPU has AVX512-BF16, and
    INFLEET_CPU_WOQ is not "torch"."""
    return os.environ.get("INFLEET_CPU_WOQ", "kernel") != "torch" and _cpu_has_bf16_dot()


def fits(out_features: int, in_features: int, group_size: int | None = None) -> bool:
    """Shapes the kernel takes: out in blocks of 16, in (and the int4 group) in multiples of 8."""
    groups_ok = group_size is None or (group_size % PAIRS == 0 and in_features % group_size == 0)
    return out_features % LANES == 0 and in_features % PAIRS == 0 and groups_ok


def pack_bf16(weight: Tensor) -> Tensor:
    """bf16 [N, K] -> [N / 16, K / 2, 16, 2]: per block and input pair, each of the 16 channels' two weights."""
    n, k = weight.shape
    return weight.reshape(n // LANES, LANES, k // 2, 2).transpose(1, 2).contiguous()


def unpack_bf16(packed: Tensor) -> Tensor:
    """pack_bf16's inverse: [N / 16, K / 2, 16, 2] -> bf16 [N, K]."""
    blocks, pairs = packed.shape[:2]
    return packed.transpose(1, 2).reshape(blocks * LANES, pairs * 2)


def bf16_rows(packed: Tensor, ids: Tensor) -> Tensor:
    """Rows `ids` of the bf16 weight [N, K] that pack_bf16 packed (an embedding lookup in a tied head's table)."""
    return packed[ids // LANES, :, ids % LANES].reshape(*ids.shape, -1)


def pack_int8(weight: Tensor) -> Tensor:
    """int8 [N, K] -> [N / 16, K / 2, 2, 16]: per block and input pair, the 16 channels' first then second weight."""
    n, k = weight.shape
    return weight.reshape(n // LANES, LANES, k // 2, 2).permute(0, 2, 3, 1).contiguous()


def unpack_int8(packed: Tensor) -> Tensor:
    """pack_int8's inverse: [N / 16, K / 2, 2, 16] -> int8 [N, K]."""
    blocks, pairs = packed.shape[:2]
    return packed.permute(0, 3, 1, 2).reshape(blocks * LANES, pairs * 2)


def int8_rows(packed: Tensor, ids: Tensor) -> Tensor:
    """Rows `ids` of the int8 codes [N, K] that pack_int8 packed (an embedding lookup in a tied head's table):
    row v is [v // 16, :, :, v % 16]."""
    return packed[ids // LANES, :, :, ids % LANES].reshape(*ids.shape, -1)


def pack_int4(packed: Tensor, scale: Tensor, offset: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The portable int4 layout (`formats.Int4Weight`: [N, K / 2] bytes, scale/offset [N, K / group]) -> bytes
    [N / 16, K / 2, 16] and float16 scale/offset [N / 16, K / group, 16] (a 4-bit GGUF's own precision for them)."""
    n = packed.shape[0]

    def blocks(t: Tensor) -> Tensor:
        return t.reshape(n // LANES, LANES, -1).transpose(1, 2).contiguous()

    return blocks(packed), blocks(scale.half()), blocks(offset.half())


def fits_float16(*tensors: Tensor) -> bool:
    """Whether int4 scales/offsets keep their value's range in float16 (every GGUF 4-bit block does)."""
    return all(bool(torch.isfinite(t.half()).all()) for t in tensors)


def _profiled(name: str) -> contextlib.AbstractContextManager[object]:
    return record_function(name) if torch.autograd._profiler_enabled() else contextlib.nullcontext()


def _library() -> ctypes.CDLL:
    lib = cpu_native.library()
    if lib is None:
        raise RuntimeError("infleet's CPU kernels are not available")
    return lib


def _call(
    entry: str, profile_name: str, x: Tensor, n: int, weights: tuple[Tensor, ...], out_dtype: torch.dtype, *tail: int
) -> Tensor:
    """Run one of the kernel's GEMMs on x [..., K] rounded to bf16, into a new [..., N] tensor of `out_dtype` (the
    kernel stores bf16 or float32; any other dtype is a cast of the float32)."""
    k = x.shape[-1]
    xb = as_dtype(x if x.dim() == 2 else x.reshape(-1, k), torch.bfloat16, contiguous=True)
    stored = torch.bfloat16 if out_dtype == torch.bfloat16 else torch.float32
    out = torch.empty(*x.shape[:-1], n, dtype=stored)
    with _profiled(profile_name):
        status = getattr(_library(), entry)(
            xb.data_ptr(), *(w.data_ptr() for w in weights), out.data_ptr(), out_dtype == torch.bfloat16,
            xb.shape[0], n, k, *tail, torch.get_num_threads(),
        )  # fmt: skip
    if status:
        raise RuntimeError(f"the CPU {entry} refused x {tuple(x.shape)} for {n} outputs {tail or ''}")
    return as_dtype(out, out_dtype)


def bf16_gemm(x: Tensor, packed: Tensor, out_dtype: torch.dtype = torch.float32) -> Tensor:
    """x [..., K] (rounded to bf16) @ weight.T -> [..., N] in `out_dtype`; `packed` from pack_bf16."""
    n, k = packed.shape[0] * LANES, packed.shape[1] * 2
    if x.shape[-1] != k or packed.dtype != torch.bfloat16 or not packed.is_contiguous():
        raise ValueError(f"want x [..., {k}] and contiguous bf16 weights; got {tuple(x.shape)}, {packed.dtype}")
    return _call("bf16_gemm", PROFILE_BF16, x, n, (packed,), out_dtype)


def int8_gemm(x: Tensor, packed: Tensor, scale: Tensor, out_dtype: torch.dtype = torch.float32) -> Tensor:
    """x [..., K] (rounded to bf16) @ (int8 weight * scale [N]).T -> [..., N] in `out_dtype`; `packed` from
    pack_int8."""
    n, k = packed.shape[0] * LANES, packed.shape[1] * 2
    if x.shape[-1] != k or scale.shape != (n,) or scale.dtype != torch.float32:
        raise ValueError(f"want x [..., {k}] and float32 scale [{n}]; got {tuple(x.shape)}, {tuple(scale.shape)}")
    return _call("int8_gemm", PROFILE_INT8, x, n, (packed, scale), out_dtype)


def int4_gemm(
    x: Tensor, packed: Tensor, scale: Tensor, offset: Tensor, group_size: int, out_dtype: torch.dtype = torch.float32
) -> Tensor:
    """x [..., K] (rounded to bf16) @ (codes * scale + offset, per group of inputs).T -> [..., N] in `out_dtype`;
    the weights from pack_int4 (scale and offset in float16, applied in float32)."""
    n, k = packed.shape[0] * LANES, packed.shape[1] * 2
    groups = (packed.shape[0], k // group_size, LANES)
    if (
        x.shape[-1] != k
        or scale.shape != groups
        or offset.shape != groups
        or {scale.dtype, offset.dtype} != {torch.half}
    ):
        raise ValueError(
            f"want x [..., {k}] and float16 scale/offset {groups}; got {tuple(x.shape)}, {tuple(scale.shape)} "
            f"{scale.dtype}, {tuple(offset.shape)} {offset.dtype}"
        )
    return _call("int4_gemm", PROFILE_INT4, x, n, (packed, scale, offset), out_dtype, group_size)
