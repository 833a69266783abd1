"""Logits through an int8 LM head on the CPU (the C kernel) against PyTorch's float-chunk path: the same values to
float32 rounding, a row's logits bit for bit alike in any batch, bad inputs refused, and the int8 tier's tied head
serving through it."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infleet.runtime.kernels import cpu_logits, dispatch

pytestmark = pytest.mark.skipif(not cpu_logits.available(), reason="no C compiler to build the CPU kernels")


def _head(g: torch.Generator, vocab: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    weight = torch.randint(-127, 128, (vocab, k), dtype=torch.int8, generator=g)
    return weight, torch.rand(vocab, generator=g) * 0.02


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 40), st.integers(1, 300), st.sampled_from([1, 7, 64, 576]), st.integers(0, 2**16))
def test_matches_the_float_chunk_path(rows: int, vocab: int, k: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    weight, scale = _head(g, vocab, k)
    x = torch.randn(rows, k, generator=g)
    ref = torch.nn.functional.linear(x, weight.float()) * scale
    out = cpu_logits.int8_logits(x, weight, scale)
    assert out.dtype == torch.float32 and out.shape == (rows, vocab)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-5)


def test_a_row_computes_alike_in_any_batch() -> None:
    g = torch.Generator().manual_seed(4)
    weight, scale = _head(g, 1031, 96)  # a vocabulary that is not a multiple of the kernel's row groups
    x = torch.randn(33, 96, generator=g)
    batch = cpu_logits.int8_logits(x, weight, scale)
    for i in (0, 5, 32):
        assert torch.equal(cpu_logits.int8_logits(x[i : i + 1], weight, scale)[0], batch[i])
    assert torch.equal(
        cpu_logits.int8_logits(x.bfloat16(), weight, scale), cpu_logits.int8_logits(x.bfloat16().float(), weight, scale)
    )


def test_bad_inputs_are_refused() -> None:
    weight, scale = _head(torch.Generator().manual_seed(0), 8, 4)
    with pytest.raises(ValueError, match="want x"):
        cpu_logits.int8_logits(torch.randn(2, 5), weight, scale)
    with pytest.raises(ValueError, match="int8"):
        cpu_logits.int8_logits(torch.randn(2, 4), weight.float(), scale)


def test_dispatch_takes_the_kernel_unless_told_not_to(monkeypatch: pytest.MonkeyPatch) -> None:
    """`dispatch.int8_logits` (the int8 tier's tied head on a CPU): the kernel, or with INFLEET_CPU_LOGITS=torch the
    float chunks; the same logits either way, in the input's leading shape."""
    g = torch.Generator().manual_seed(9)
    weight, scale = _head(g, 5000, 64)  # more rows than one float chunk (LOGITS_CHUNK_ROWS)
    x = torch.randn(2, 3, 64, generator=g)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        native = dispatch.int8_logits(x, weight, scale)
    assert cpu_logits.PROFILE_NAME in {e.key for e in prof.key_averages()}
    monkeypatch.setenv("INFLEET_CPU_LOGITS", "torch")
    assert not cpu_logits.available()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        chunks = dispatch.int8_logits(x, weight, scale)
    assert cpu_logits.PROFILE_NAME not in {e.key for e in prof.key_averages()}
    assert native.shape == chunks.shape == (2, 3, 5000)
    torch.testing.assert_close(native, chunks, atol=1e-4, rtol=1e-5)
    monkeypatch.delenv("INFLEET_CPU_LOGITS")
    assert dispatch.int8_logits(x[:0], weight, scale).shape == (0, 3, 5000)  # a step that samples no row
