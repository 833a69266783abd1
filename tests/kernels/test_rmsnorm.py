"""Fused add + RMSNorm matches the reference for odd widths, with and without the residual."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infleet.runtime.kernels import rmsnorm as R

DTYPES = st.sampled_from([torch.float16, torch.bfloat16, torch.float32])


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 9), st.integers(1, 700), st.booleans(), DTYPES, st.integers(0, 2**16))
def test_rms_norm_matches_reference(rows: int, d: int, with_residual: bool, dtype: torch.dtype, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, d, generator=g).to(dtype)
    w = (torch.rand(d, generator=g) + 0.5).to(dtype)
    r = torch.randn(rows, d, generator=g).to(dtype) if with_residual else None
    out, res = R.rms_norm_triton(x, w, 1e-5, r)
    ref, ref_res = R.rms_norm_reference(x, w, 1e-5, r)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    if with_residual:
        assert res is not None and ref_res is not None
        torch.testing.assert_close(res, ref_res, atol=tol, rtol=tol)
    else:
        assert res is None


def test_three_dimensional_input_and_reference_math() -> None:
    x = torch.randn(2, 3, 64)
    w = torch.rand(64)
    out, _ = R.rms_norm_triton(x, w, 1e-6)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(R.rms_norm_reference(x, w, 1e-6)[0], expected)
