"""dequantize(quantize(W)) stays within the bound each format states, for odd shapes and scales too."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infleet.runtime.quant import formats as F

# Float32 arithmetic in scale/divide/multiply adds a few ulps beyond the exact-arithmetic bound: of the bound itself,
# and of the weight (a weight of 3 next to a step of 0.02 has an ulp above 1e-5 of half a step).
SLACK = 1 + 1e-5


def ulps(w: torch.Tensor) -> torch.Tensor:
    return 4 * torch.finfo(torch.float32).eps * w.abs()


@st.composite
def weights(draw: st.DrawFn, in_multiple: int = 1) -> torch.Tensor:
    out_features = draw(st.integers(1, 48))
    in_features = draw(st.integers(1, 6)) * in_multiple if in_multiple > 1 else draw(st.integers(1, 300))
    magnitude = draw(st.sampled_from([1e-4, 0.02, 1.0, 300.0]))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=g) * magnitude
    if draw(st.booleans()):  # a skewed row and an all-zero row: asymmetric ranges and the zero-scale guard
        w[0] = w[0].abs() + magnitude
        if out_features > 1:
            w[-1] = 0
    return w


@settings(max_examples=40, deadline=None)
@given(weights())
def test_int8_within_half_step(w: torch.Tensor) -> None:
    q = F.quantize_int8(w)
    assert q.weight.dtype == torch.int8 and q.weight.abs().max() <= 127
    err = (F.dequantize_int8(q) - w).abs()
    assert (err <= F.int8_error_bound(q) * SLACK + ulps(w)).all()


@settings(max_examples=40, deadline=None)
@given(weights())
def test_fp8_within_relative_bound(w: torch.Tensor) -> None:
    q = F.quantize_fp8(w)
    assert q.weight.dtype == torch.float8_e4m3fn
    err = (F.dequantize_fp8(q) - w).abs()
    assert (err <= F.fp8_error_bound(w, q) * SLACK).all()


@settings(max_examples=40, deadline=None)
@given(weights(in_multiple=32), st.sampled_from([None, 32]))
def test_int4_within_half_step(w: torch.Tensor, group_size: int | None) -> None:
    q = F.quantize_int4(w, group_size)
    out_features, in_features = w.shape
    assert q.packed.shape == (out_features, in_features // 2) and q.packed.dtype == torch.uint8
    assert in_features % q.group_size == 0
    err = (F.dequantize_int4(q) - w).abs()
    assert (err <= F.int4_error_bound(q) * SLACK + ulps(w)).all()


def test_int4_pack_roundtrip_and_nibble_order() -> None:
    codes = torch.randint(0, 16, (5, 64), dtype=torch.uint8)
    packed = F.pack_int4(codes)
    assert torch.equal(F.unpack_int4(packed), codes)
    assert packed[0, 0] == codes[0, 0] | (codes[0, 1] << 4)


@pytest.mark.parametrize(("in_features", "expected"), [(576, 64), (1536, 128), (4096, 128), (96, 32)])
def test_group_size_choice(in_features: int, expected: int) -> None:
    assert F.choose_group_size(in_features) == expected


def test_int4_refuses_undividable_shapes() -> None:
    with pytest.raises(F.QuantizationError, match="divisible by one of"):
        F.quantize_int4(torch.randn(4, 100))
    with pytest.raises(F.QuantizationError, match="does not divide"):
        F.quantize_int4(torch.randn(4, 96), group_size=64)


def test_rejects_non_matrix_and_integer_weights() -> None:
    with pytest.raises(F.QuantizationError, match="2-D"):
        F.quantize_int8(torch.randn(3, 4, 5))
    with pytest.raises(F.QuantizationError, match="floating point"):
        F.quantize_fp8(torch.ones(3, 4, dtype=torch.int32))


def test_error_ordering_on_llm_like_weights() -> None:
    """Sanity on real-looking weights: the errors are small relative to the weights, ordered int8 < int4."""
    w = torch.randn(256, 576) * 0.02
    e8 = (F.dequantize_int8(F.quantize_int8(w)) - w).pow(2).mean()
    e4 = (F.dequantize_int4(F.quantize_int4(w)) - w).pow(2).mean()
    ef = (F.dequantize_fp8(F.quantize_fp8(w)) - w).pow(2).mean()
    assert e8 < ef < e4 < w.pow(2).mean() * 0.02
