"""Fused SiLU-and-multiply matches silu(gate) * up."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from infleet.runtime.kernels import activation as A

DTYPES = st.sampled_from([torch.float16, torch.bfloat16, torch.float32])


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=3), DTYPES, st.integers(0, 2**16))
def test_silu_and_mul_matches_reference(shape: list[int], dtype: torch.dtype, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    gate = (torch.randn(shape, generator=g) * 4).to(dtype)
    up = torch.randn(shape, generator=g).to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(A.silu_and_mul_triton(gate, up), A.silu_and_mul_reference(gate, up), atol=tol, rtol=tol)


def test_reference_is_swiglu_gate() -> None:
    gate, up = torch.randn(5, 7), torch.randn(5, 7)
    torch.testing.assert_close(A.silu_and_mul_reference(gate, up), F.silu(gate) * up)
