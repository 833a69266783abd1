"""The bf16 RMSNorm and SiLU-and-multiply C kernels (`kernels/cpu_pointwise.py`) against PyTorch's reference ops,
and the dispatch that picks them for bf16 only."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infleet.runtime.kernels import cpu_pointwise, dispatch
from infleet.runtime.kernels.activation import silu_and_mul_reference
from infleet.runtime.kernels.rmsnorm import rms_norm_reference

pytestmark = pytest.mark.skipif(
    not cpu_pointwise.available(torch.zeros(1, dtype=torch.bfloat16)), reason="infleet's CPU kernels do not load here"
)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 70), st.sampled_from([8, 64, 576]), st.booleans(), st.integers(0, 2**16))
def test_rms_norm_matches_the_reference(rows: int, dim: int, residual: bool, seed: int) -> None:
    """The same float32 arithmetic up to the order of one sum: within one bf16 step of the reference, almost every
    element equal; the residual sum (rounded once) equal bit for bit."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, dim, generator=g).bfloat16()
    r = torch.randn(rows, dim, generator=g).bfloat16() if residual else None
    w = (torch.rand(dim, generator=g) + 0.5).bfloat16()
    out, summed = cpu_pointwise.rms_norm(x, w, 1e-5, r)
    ref, ref_summed = rms_norm_reference(x, w, 1e-5, r)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    torch.testing.assert_close(out, ref, atol=0, rtol=2**-7)
    assert (out == ref).float().mean() > 0.99
    if residual:
        assert summed is not None and ref_summed is not None and torch.equal(summed, ref_summed)
    else:
        assert summed is None


def test_silu_and_mul_matches_the_reference_on_halves_of_one_tensor() -> None:
    g = torch.Generator().manual_seed(1)
    gate_up = (torch.randn(7, 2 * 1536, generator=g) * 4).bfloat16()
    gate, up = gate_up.chunk(2, dim=-1)  # views with a row stride of 2 x 1536
    out = cpu_pointwise.silu_and_mul(gate, up)
    ref = silu_and_mul_reference(gate, up)
    torch.testing.assert_close(out, ref, atol=0, rtol=2**-7)
    assert (out == ref).float().mean() > 0.99


def test_dispatch_takes_them_for_bf16_only() -> None:
    x32 = torch.randn(2, 64)
    w = torch.ones(64)
    assert torch.equal(dispatch.rms_norm(x32, w, 1e-5)[0], rms_norm_reference(x32, w, 1e-5)[0])  # fp32: reference
    x16 = x32.bfloat16()
    assert torch.equal(dispatch.rms_norm(x16, w.bfloat16(), 1e-5)[0], cpu_pointwise.rms_norm(x16, w, 1e-5)[0])
    with pytest.raises(ValueError, match="want bf16"):
        cpu_pointwise.rms_norm(x32, w, 1e-5)
    with pytest.raises(ValueError, match="want bf16"):
        cpu_pointwise.silu_and_mul(x32, x32)


def test_rope_gives_the_models_bits() -> None:
    """RoPE on q's and k's views of one fused projection output, as the model calls it: the same bits as PyTorch's
    bf16 ops (each product and the sum rounded to bf16)."""
    from infleet.runtime.model.llama import RopeTables

    g = torch.Generator().manual_seed(2)
    t, heads, kv_heads, dim = 5, 9, 3, 64
    qkv = torch.randn(t, (heads + 2 * kv_heads) * dim, generator=g).bfloat16()
    q, k, _ = qkv.split((heads * dim, kv_heads * dim, kv_heads * dim), -1)
    angles = torch.rand(t, dim // 2, generator=g) * 6
    cos, sin = angles.cos(), angles.sin()
    tables = RopeTables(
        torch.cat((cos, cos), -1).unsqueeze(1).bfloat16(), torch.cat((-sin, sin), -1).unsqueeze(1).bfloat16()
    )
    for x in (q.view(t, heads, dim), k.view(t, kv_heads, dim)):
        x1, x2 = x.chunk(2, dim=-1)
        expected = x * tables.cos + torch.cat((x2, x1), dim=-1) * tables.sin  # PyTorch's ops
        got = cpu_pointwise.rope(x, tables.cos, tables.sin)
        assert got.is_contiguous() and torch.equal(got, expected)
        assert torch.equal(tables.rotate(x), expected)
