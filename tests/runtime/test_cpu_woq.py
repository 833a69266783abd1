"""The bf16/int8/int4 tiers' CPU kernel (AVX512-BF16, `kernels/cpu_woq.py`) against the (dequantized) weights in
float32: the same values to the kernel's bf16 activations, a row bit for bit alike in any batch (tiles and the rows
left over), bf16 outputs rounded as a cast rounds, bad shapes refused, and the tiers' layers on it. Skipped on a CPU
without AVX512-BF16."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from infleet.runtime.kernels import cpu_woq
from infleet.runtime.quant import formats as F
from infleet.runtime.quant import tiers as T

pytestmark = pytest.mark.skipif(not cpu_woq.available(), reason="no AVX512-BF16 on this CPU, or no C compiler")


def _int8(g: torch.Generator, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g), torch.rand(n, generator=g) * 0.02


def _int4(g: torch.Generator, n: int, k: int, group: int) -> F.Int4Weight:
    return F.quantize_int4(torch.randn(n, k, generator=g) * 0.05, group)


@settings(max_examples=20, deadline=None)
@given(
    st.integers(1, 40), st.sampled_from([16, 48, 96]), st.sampled_from([8, 64, 576]), st.integers(0, 2**16),
)  # fmt: skip
def test_int8_matches_the_dequantized_weight(rows: int, n: int, k: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    weight, scale = _int8(g, n, k)
    x = torch.randn(rows, k, generator=g).bfloat16()
    ref = torch.nn.functional.linear(x.float(), weight.float()) * scale
    out = cpu_woq.int8_gemm(x, cpu_woq.pack_int8(weight), scale)
    assert out.dtype == torch.float32 and out.shape == (rows, n)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-5)


@settings(max_examples=20, deadline=None)
@given(
    st.integers(1, 40),
    st.sampled_from([16, 48]),
    st.sampled_from([(64, 32), (576, 32), (256, 128)]),
    st.integers(0, 2**16),
)
def test_int4_matches_the_dequantized_weight(rows: int, n: int, k_group: tuple[int, int], seed: int) -> None:
    k, group = k_group
    g = torch.Generator().manual_seed(seed)
    q = _int4(g, n, k, group)
    x = torch.randn(rows, k, generator=g).bfloat16()
    in_half = F.Int4Weight(q.packed, q.scale.half().float(), q.offset.half().float(), group)  # as the kernel keeps them
    ref = torch.nn.functional.linear(x.float(), F.dequantize_int4(in_half))
    out = cpu_woq.int4_gemm(x, *cpu_woq.pack_int4(q.packed, q.scale, q.offset), group)
    assert out.dtype == torch.float32 and out.shape == (rows, n)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 40), st.sampled_from([16, 48, 96]), st.sampled_from([8, 64, 576]), st.integers(0, 2**16))
def test_bf16_matches_the_weight_in_float32(rows: int, n: int, k: int, seed: int) -> None:
    """bf16 x bf16 products are exact in float32: only the order of the sums separates the kernel from float32."""
    g = torch.Generator().manual_seed(seed)
    weight = (torch.randn(n, k, generator=g) * 0.05).bfloat16()
    x = torch.randn(rows, k, generator=g).bfloat16()
    out = cpu_woq.bf16_gemm(x, cpu_woq.pack_bf16(weight))
    assert out.dtype == torch.float32 and out.shape == (rows, n)
    torch.testing.assert_close(out, x.float() @ weight.float().T, atol=1e-5, rtol=1e-5)


def test_bf16_outputs_are_the_float32_outputs_rounded() -> None:
    """Stored as bf16, every GEMM gives its float32 result rounded as PyTorch's cast rounds, bit for bit."""
    g = torch.Generator().manual_seed(4)
    weight, scale = _int8(g, 48, 64)
    q = _int4(g, 48, 64, 32)
    x = torch.randn(9, 64, generator=g).bfloat16()
    calls = [
        lambda dtype: cpu_woq.bf16_gemm(x, cpu_woq.pack_bf16((weight * 0.01).bfloat16()), dtype),
        lambda dtype: cpu_woq.int8_gemm(x, cpu_woq.pack_int8(weight), scale, dtype),
        lambda dtype: cpu_woq.int4_gemm(x, *cpu_woq.pack_int4(q.packed, q.scale, q.offset), 32, dtype),
    ]
    for call in calls:
        rounded = call(torch.bfloat16)
        assert rounded.dtype == torch.bfloat16
        assert torch.equal(rounded, call(torch.float32).bfloat16())
        assert torch.equal(call(torch.float16), call(torch.float32).half())  # other dtypes: a cast after


def test_a_row_computes_alike_in_any_batch() -> None:
    """Rows in a full tile, rows left over and a row alone give the same bits: decode rows keep their numerics
    whatever else is in the batch, and prompt rows can share the kernel."""
    g = torch.Generator().manual_seed(3)
    weight, scale = _int8(g, 64, 192)
    q = _int4(g, 64, 192, 32)
    packed8, packed4 = cpu_woq.pack_int8(weight), cpu_woq.pack_int4(q.packed, q.scale, q.offset)
    x = torch.randn(11, 192, generator=g).bfloat16()
    batch8, batch4 = cpu_woq.int8_gemm(x, packed8, scale), cpu_woq.int4_gemm(x, *packed4, 32)
    for i in range(11):
        row = x[i : i + 1]
        assert torch.equal(cpu_woq.int8_gemm(row, packed8, scale)[0], batch8[i])
        assert torch.equal(cpu_woq.int4_gemm(row, *packed4, 32)[0], batch4[i])
    assert torch.equal(cpu_woq.int8_gemm(x.view(1, 11, 192), packed8, scale)[0], batch8)  # leading dims kept
    packed16 = cpu_woq.pack_bf16((torch.randn(64, 192, generator=g) * 0.05).bfloat16())
    batch16 = cpu_woq.bf16_gemm(x, packed16)
    for i in range(11):
        assert torch.equal(cpu_woq.bf16_gemm(x[i : i + 1], packed16)[0], batch16[i])


def test_bad_shapes_are_refused() -> None:
    g = torch.Generator().manual_seed(0)
    weight, scale = _int8(g, 16, 64)
    with pytest.raises(ValueError, match="want x"):
        cpu_woq.int8_gemm(torch.randn(2, 32), cpu_woq.pack_int8(weight), scale)
    with pytest.raises(ValueError, match="float32 scale"):
        cpu_woq.int8_gemm(torch.randn(2, 64), cpu_woq.pack_int8(weight), scale.bfloat16())
    q = _int4(g, 16, 64, 32)
    packed, s, o = cpu_woq.pack_int4(q.packed, q.scale, q.offset)
    with pytest.raises(ValueError, match="scale/offset"):
        cpu_woq.int4_gemm(torch.randn(2, 64), packed, s, o, 16)
    with pytest.raises(ValueError, match="contiguous bf16"):
        cpu_woq.bf16_gemm(torch.randn(2, 64), cpu_woq.pack_bf16(torch.randn(16, 64).bfloat16()).float())
    with pytest.raises(ValueError, match="want x"):
        cpu_woq.bf16_gemm(torch.randn(2, 32), cpu_woq.pack_bf16(torch.randn(16, 64).bfloat16()))
    with pytest.raises(ValueError, match="float16 scale/offset"):
        cpu_woq.int4_gemm(torch.randn(2, 64), packed, s.float(), o.float(), 32)
    assert cpu_woq.fits_float16(q.scale, q.offset) and not cpu_woq.fits_float16(torch.tensor([1e6]))
    assert (
        cpu_woq.fits(16, 64, 32)
        and not cpu_woq.fits(24, 64)
        and not cpu_woq.fits(16, 60)
        and not cpu_woq.fits(16, 64, 12)
    )


@pytest.mark.parametrize("tier", ["int8", "int4"])
def test_the_tiers_layers_run_on_it(tier: str) -> None:
    """A layer whose shape fits takes the kernel, one that does not keeps PyTorch's path; both give the tier's
    dequantized weights' result."""
    g = torch.Generator().manual_seed(5)
    for n, woq in ((48, True), (40, False)):
        linear = nn.Linear(128, n, bias=False)
        with torch.no_grad():
            linear.weight.copy_(torch.randn(n, 128, generator=g) * 0.05)
        if tier == "int8":
            layer: nn.Module = T.Int8Linear.from_linear(linear)
            q8 = F.quantize_int8(linear.weight.detach())
            dequantized = q8.weight.float() * q8.scale[:, None]
        else:
            layer = T.Int4Linear.from_linear(linear, 32)
            dequantized = F.dequantize_int4(F.quantize_int4(linear.weight.detach(), 32))
        assert layer.woq is woq
        x = torch.randn(5, 128, generator=g).bfloat16()
        out = layer(x)
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), x.float() @ dequantized.T, atol=2e-2, rtol=2e-2)


def test_packing_round_trips() -> None:
    weight, _ = _int8(torch.Generator().manual_seed(8), 48, 24)
    packed = cpu_woq.pack_int8(weight)
    assert torch.equal(cpu_woq.unpack_int8(packed), weight)
    ids = torch.tensor([[0, 17], [47, 16]])
    assert torch.equal(cpu_woq.int8_rows(packed, ids), weight[ids])
    weight16 = torch.randn(48, 24).bfloat16()
    packed16 = cpu_woq.pack_bf16(weight16)
    assert torch.equal(cpu_woq.unpack_bf16(packed16), weight16)
    assert torch.equal(cpu_woq.bf16_rows(packed16, ids), weight16[ids])


def test_the_bf16_tier_packs_its_layers_and_tied_head() -> None:
    """On this CPU the bf16 tier's layers are Bf16Linear (same values, same bytes), a tied head and its embedding
    one packed table; logits stay float32; a layer the kernel cannot take stays an nn.Linear."""
    g = torch.Generator().manual_seed(6)
    model = nn.Module()
    model.model = nn.Module()
    model.model.embed_tokens = nn.Embedding(64, 32).bfloat16()
    model.lm_head = nn.Linear(32, 64, bias=False).bfloat16()
    model.lm_head.weight = model.model.embed_tokens.weight
    model.proj = nn.Linear(32, 48, bias=True).bfloat16()
    model.odd = nn.Linear(32, 40, bias=False).bfloat16()  # 40 outputs: not in blocks of 16
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    table, proj_w, proj_b = model.lm_head.weight.detach().clone(), model.proj.weight.detach().clone(), model.proj.bias
    before = T.model_bytes(model)
    info = T.quantize_model(model, "bf16")
    assert info.layers == 2 and info.weight_bytes == before
    assert isinstance(model.proj, T.Bf16Linear) and isinstance(model.lm_head, T.Bf16Head)
    assert isinstance(model.odd, nn.Linear) and model.model.embed_tokens.weight is model.lm_head.weight
    ids = torch.tensor([3, 63, 16])
    assert torch.equal(model.model.embed_tokens(ids), table[ids])
    x = torch.randn(5, 32, generator=g).bfloat16()
    logits = model.lm_head(x)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, x.float() @ table.float().T, atol=1e-5, rtol=1e-5)
    out = model.proj(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, (x.float() @ proj_w.float().T + proj_b.float()).bfloat16())
