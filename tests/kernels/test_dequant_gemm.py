"""The int8/int4 dequantize-GEMM kernels match the torch reference on odd shapes, in fp16 and bf16."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infleet.runtime.kernels import dequant_gemm as G
from infleet.runtime.quant import formats as F

DTYPES = st.sampled_from([torch.float16, torch.bfloat16])
SEEDS = st.integers(0, 2**16)


def _close(out: torch.Tensor, ref: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> None:
    # 16-bit operands and output: error scales with sum |x||w|, a few units of 2^-8 of it.
    bound = (x.float().abs() @ w.float().abs().T) * 2**-6 + 1e-3
    assert ((out.float() - ref.float()).abs() <= bound).all(), (out.float() - ref.float()).abs().max()


@settings(max_examples=8, deadline=None)
@given(st.integers(1, 40), st.integers(1, 150), st.integers(1, 200), DTYPES, SEEDS)
def test_int8_gemm_matches_reference(m: int, n: int, k: int, dtype: torch.dtype, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(dtype)
    q = F.quantize_int8(torch.randn(n, k, generator=g))
    out = G.int8_gemm_triton(x, q.weight, q.scale)
    ref = G.int8_gemm_reference(x, q.weight, q.scale)
    _close(out, ref, x, F.dequantize_int8(q))


@settings(max_examples=8, deadline=None)
@given(st.integers(1, 40), st.integers(1, 150), st.integers(1, 5), st.sampled_from([32, 64, 128]), DTYPES, SEEDS)
def test_int4_gemm_matches_reference(
    m: int, n: int, groups: int, group_size: int, dtype: torch.dtype, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    k = groups * group_size
    x = torch.randn(m, k, generator=g).to(dtype)
    q = F.quantize_int4(torch.randn(n, k, generator=g), group_size)
    out = G.int4_gemm_triton(x, q.packed, q.scale, q.offset, q.group_size)
    ref = G.int4_gemm_reference(x, q.packed, q.scale, q.offset, q.group_size)
    _close(out, ref, x, F.dequantize_int4(q))


def test_references_agree_with_dequantized_weights() -> None:
    x = torch.randn(3, 128, dtype=torch.float32)
    w = torch.randn(10, 128)
    q8, q4 = F.quantize_int8(w), F.quantize_int4(w)
    torch.testing.assert_close(G.int8_gemm_reference(x, q8.weight, q8.scale), x @ F.dequantize_int8(q8).T)
    torch.testing.assert_close(
        G.int4_gemm_reference(x, q4.packed, q4.scale, q4.offset, q4.group_size), x @ F.dequantize_int4(q4).T
    )


def test_rejects_bad_inputs() -> None:
    q = F.quantize_int8(torch.randn(8, 32))
    try:
        G.int8_gemm_triton(torch.randn(2, 32), q.weight, q.scale)
    except ValueError as e:
        assert "16-bit" in str(e)
    else:
        raise AssertionError("fp32 activations were accepted")
    try:
        G.int8_gemm_triton(torch.randn(2, 31, dtype=torch.float16), q.weight, q.scale)
    except ValueError as e:
        assert "[M, 32]" in str(e)
    else:
        raise AssertionError("a mismatched K was accepted")


def test_cpu_int8_rows_take_their_token_s_path_whatever_the_batch() -> None:
    """Prompt rows go through the float GEMM, the others through `_weight_int8pack_mm`; a row's result is the same
    alone or in a mixed batch (what keeps greedy outputs independent of what else runs)."""
    from infleet.runtime.kernels import dispatch

    if not dispatch.CPU_INT8_MM or dispatch.backend() != "auto":
        pytest.skip("needs PyTorch's CPU int8 kernel and the auto backend")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 64, generator=g)
    q = F.quantize_int8(torch.randn(48, 64, generator=g))
    mask = torch.tensor([False, True, True, False, True, False])
    with dispatch.prompt_rows(mask):
        mixed = dispatch.int8_linear(x, q.weight, q.scale)
    with dispatch.prompt_rows(torch.ones(3, dtype=torch.bool)):
        prompt = dispatch.int8_linear(x[mask], q.weight, q.scale)
    generated = dispatch.int8_linear(x[~mask], q.weight, q.scale)  # no mask: every row is a generated token's
    assert torch.equal(mixed[mask], prompt) and torch.equal(mixed[~mask], generated)
    exact = x @ F.dequantize_int8(q).T  # the float path is the dequantized weight's GEMM up to float rounding
    assert torch.allclose(prompt, exact[mask], atol=1e-4, rtol=1e-4)
    with dispatch.prompt_rows(torch.ones(3, dtype=torch.bool)):
        as_prompt = dispatch.int8_linear(x[~mask], q.weight, q.scale)
    assert not torch.equal(as_prompt, generated)  # the two paths round differently: the check above can fail
