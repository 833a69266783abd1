"""Weight formats for the quantization tiers: quantize a [out, in] weight and dequantize it back.

Each format promises an error bound on `dequantize(quantize(W))`, element by element, and the tests hold it to it:

- fp8 (e4m3, one scale per output channel, scale = amax / 448): e4m3 keeps 3 mantissa bits, so a normal value is
  off by at most 2^-4 of itself; values below e4m3's normal range (2^-6 x scale) are off by at most half the
  subnormal step, 2^-10 x scale. Bound: max(|w| / 16, scale / 1024).
- int8 (symmetric, one scale per output channel, scale = amax / 127, codes -127..127): round-to-nearest, so at most
  half a step. Bound: scale / 2.
- int4 (asymmetric: per group of `group_size` input columns a scale and a float offset, the group's minimum, so
  w ~ code * scale + offset with codes 0..15, two per byte: even column in the low nibble, odd in the high one).
  A float offset (rather than an integer zero point) lets the 16 levels span exactly [min, max] of the group, which
  also reproduces the grid of weights that were already 4-bit (GGUF Q4_0/Q4_1) when the groups line up.
  Bound: scale / 2 with scale = (max(w) - min(w)) / 15 per group.

Scales are kept in float32; `dequantize` returns the dtype asked for (the bound is on the float32 result).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
INT4_GROUP_SIZES = (128, 64, 32)


class QuantizationError(ValueError):
    """A tier cannot apply to a weight (a shape no group size divides, a non-2-D tensor, ...)."""


@dataclass
class Fp8Weight:
    weight: torch.Tensor  # [out, in] float8_e4m3fn
    scale: torch.Tensor  # [out] float32


@dataclass
class Int8Weight:
    weight: torch.Tensor  # [out, in] int8, codes in -127..127
    scale: torch.Tensor  # [out] float32


@dataclass
class Int4Weight:
    packed: torch.Tensor  # [out, in // 2] uint8: column 2j in the low nibble, 2j + 1 in the high nibble
    scale: torch.Tensor  # [out, in // group_size] float32
    offset: torch.Tensor  # [out, in // group_size] float32, the group's minimum (the value of code 0)
    group_size: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.packed.shape[0], self.packed.shape[1] * 2


def _check_2d(w: torch.Tensor) -> None:
    if w.dim() != 2:
        raise QuantizationError(f"weights to quantize must be 2-D [out, in], got shape {tuple(w.shape)}")
    if not w.is_floating_point():
        raise QuantizationError(f"weights to quantize must be floating point, got {w.dtype}")


def _channel_scale(w: torch.Tensor, qmax: float) -> torch.Tensor:
    # An all-zero row gets scale 1 rather than 0, so dequantize never divides by or multiplies with nothing.
    amax = w.abs().amax(dim=1)
    return torch.where(amax > 0, amax / qmax, torch.ones_like(amax))


def quantize_fp8(w: torch.Tensor) -> Fp8Weight:
    _check_2d(w)
    w = w.float()
    scale = _channel_scale(w, FP8_MAX)
    q = (w / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return Fp8Weight(q, scale)


def dequantize_fp8(q: Fp8Weight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (q.weight.float() * q.scale[:, None]).to(dtype)


def fp8_error_bound(w: torch.Tensor, q: Fp8Weight) -> torch.Tensor:
    return torch.maximum(w.float().abs() / 16, q.scale[:, None] / 1024)


def quantize_int8(w: torch.Tensor) -> Int8Weight:
    _check_2d(w)
    w = w.float()
    scale = _channel_scale(w, 127.0)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return Int8Weight(q, scale)


def dequantize_int8(q: Int8Weight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (q.weight.float() * q.scale[:, None]).to(dtype)


def int8_error_bound(q: Int8Weight) -> torch.Tensor:
    return (q.scale / 2)[:, None].expand(q.weight.shape)


def choose_group_size(in_features: int, sizes: tuple[int, ...] = INT4_GROUP_SIZES) -> int:
    """The largest group size that divides the input dimension (128 where it can, SmolLM2's 576 gets 64)."""
    for size in sizes:
        if in_features % size == 0:
            return size
    raise QuantizationError(f"int4 needs an input dimension divisible by one of {sizes}; {in_features} is not")


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """[out, in] codes 0..15 -> [out, in // 2] uint8, even column low nibble."""
    c = codes.to(torch.uint8)
    return c[:, 0::2] | (c[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """[out, in // 2] uint8 -> [out, in] uint8 codes 0..15."""
    low, high = packed & 0x0F, packed >> 4
    return torch.stack([low, high], dim=-1).reshape(packed.shape[0], -1)


def quantize_int4(w: torch.Tensor, group_size: int | None = None) -> Int4Weight:
    _check_2d(w)
    out_features, in_features = w.shape
    if group_size is None:
        group_size = choose_group_size(in_features)
    elif in_features % group_size:
        raise QuantizationError(f"int4 group size {group_size} does not divide the input dimension {in_features}")
    if group_size % 2:
        raise QuantizationError(f"int4 packs two codes per byte, so the group size must be even, got {group_size}")
    g = w.float().reshape(out_features, in_features // group_size, group_size)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    span = hi - lo
    scale = torch.where(span > 0, span / 15, torch.ones_like(span))
    codes = torch.round((g - lo[..., None]) / scale[..., None]).clamp(0, 15)
    return Int4Weight(pack_int4(codes.reshape(out_features, in_features)), scale, lo, group_size)


def dequantize_int4(q: Int4Weight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    out_features, in_features = q.shape
    codes = unpack_int4(q.packed).float().reshape(out_features, -1, q.group_size)
    w = codes * q.scale[..., None] + q.offset[..., None]
    return w.reshape(out_features, in_features).to(dtype)


def int4_error_bound(q: Int4Weight) -> torch.Tensor:
    return (q.scale / 2).repeat_interleave(q.group_size, dim=1)
