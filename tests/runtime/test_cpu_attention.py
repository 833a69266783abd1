"""The CPU decode attention kernel (C, reading the paged cache in place) against the reference and the gather path:
random lengths, GQA groups, head sizes, block sizes and both cache dtypes; a layer's strided view; batch invariance;
a mixed step (decodes, a fresh prompt, a chunk after earlier chunks, a prefix hit) through `paged_attention`; and
the fallback when no compiler is there."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infleet.runtime.kernels import cpu_attention, cpu_native, dispatch
from infleet.runtime.kernels.paged_attention import paged_attention_reference
from infleet.runtime.model.attention import AttentionMetadata, KVCache, paged_attention

pytestmark = pytest.mark.skipif(not cpu_attention.available(), reason="no C compiler to build the CPU kernel")


def _case(
    g: torch.Generator, lens: list[int], kv_heads: int, group: int, d: int, block_size: int, dtype: torch.dtype
) -> tuple[torch.Tensor, ...]:
    """Each sequence's K/V over shuffled blocks of a shared pool, as the block allocator leaves them."""
    per_seq = [-(-n // block_size) for n in lens]
    num_blocks = sum(per_seq) + 3
    order = torch.randperm(num_blocks, generator=g)
    tables = torch.zeros(len(lens), max(per_seq), dtype=torch.int64)
    used = 0
    for i, nb in enumerate(per_seq):
        tables[i, :nb] = order[used : used + nb]
        used += nb
    k = torch.randn(num_blocks, block_size, kv_heads, d, generator=g).to(dtype)
    v = torch.randn(num_blocks, block_size, kv_heads, d, generator=g).to(dtype)
    q = torch.randn(len(lens), kv_heads * group, d, generator=g).to(dtype)
    return q, k, v, tables, torch.tensor(lens)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.integers(1, 300), min_size=1, max_size=6),
    st.integers(1, 4),
    st.sampled_from([1, 2, 3, 8]),
    st.sampled_from([16, 40, 64, 128]),
    st.sampled_from([1, 7, 16]),
    st.sampled_from([torch.float32, torch.bfloat16]),
    st.integers(0, 2**16),
)
def test_matches_the_reference(
    lens: list[int], kv_heads: int, group: int, d: int, block_size: int, dtype: torch.dtype, seed: int
) -> None:
    q, k, v, tables, context_lens = _case(
        torch.Generator().manual_seed(seed), lens, kv_heads, group, d, block_size, dtype
    )
    out = cpu_attention.decode_attention(q, k, v, tables, context_lens, d**-0.5)
    ref = paged_attention_reference(q.float(), k.float(), v.float(), tables, context_lens, d**-0.5)
    assert out.dtype == dtype and out.shape == q.shape
    tol = 1e-5 if dtype == torch.float32 else 1e-2  # bf16: the output's rounding; the math is float32 in both
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)


def test_layer_view_of_a_stacked_cache_and_batch_invariance() -> None:
    """A [layers, blocks, ...] cache passes one layer's strided view; a sequence computes bit for bit alike alone and
    in a batch (each (sequence, KV head) is its own task)."""
    g = torch.Generator().manual_seed(3)
    q, k, v, tables, lens = _case(g, [200, 9, 61], 3, 3, 64, 16, torch.float32)
    stacked_k, stacked_v = torch.stack([torch.zeros_like(k), k]), torch.stack([torch.zeros_like(v), v])
    out = cpu_attention.decode_attention(q, stacked_k[1], stacked_v[1], tables, lens, 0.125)
    torch.testing.assert_close(out, paged_attention_reference(q, k, v, tables, lens, 0.125), atol=1e-5, rtol=1e-5)
    for i in range(3):
        alone = cpu_attention.decode_attention(q[i : i + 1], k, v, tables[i : i + 1], lens[i : i + 1], 0.125)
        assert torch.equal(alone[0], out[i])


def test_a_profile_names_the_kernel() -> None:
    """Outside a profile the marker is skipped (it costs more than a small call); inside one the kernel has a row."""
    q, k, v, tables, lens = _case(torch.Generator().manual_seed(2), [30], 1, 2, 16, 8, torch.float32)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        cpu_attention.decode_attention(q, k, v, tables, lens, 0.25)
    assert cpu_attention.PROFILE_NAME in {e.key for e in prof.key_averages()}


def test_bad_inputs_are_refused() -> None:
    q, k, v, tables, lens = _case(torch.Generator().manual_seed(0), [5], 2, 2, 16, 4, torch.float32)
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        cpu_attention.decode_attention(q, k.half(), v.half(), tables, lens, 1.0)
    with pytest.raises(ValueError, match="same shape and strides"):
        cpu_attention.decode_attention(q, k, v.transpose(2, 3), tables, lens, 1.0)
    with pytest.raises(RuntimeError, match="failed"):  # 4 query heads over 3 KV heads
        cpu_attention.decode_attention(
            torch.randn(1, 4, 16),
            k[:, :, :1].expand(-1, -1, 3, -1).contiguous(),
            v[:, :, :1].expand(-1, -1, 3, -1).contiguous(),
            tables,
            lens,
            1.0,
        )


def _mixed_step(dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """A step of 3 decodes, a fresh 20-token prompt, a 7-token chunk after 30 cached tokens, a prefix hit (40 cached,
    5 new) and a 24-token chunk after 40 cached: K/V for the whole context of each sequence, as a reference builds
    it. The short chunks over cached context go row by row through the kernel, the others through SDPA."""
    g = torch.Generator().manual_seed(11)
    kv_heads, group, d = 3, 3, 64
    contexts = [50, 17, 130, 20, 37, 45, 64]  # tokens each sequence attends to after this step
    queries = [1, 1, 1, 20, 7, 5, 24]
    keys = [torch.randn(n, kv_heads, d, generator=g).to(dtype) for n in contexts]
    values = [torch.randn(n, kv_heads, d, generator=g).to(dtype) for n in contexts]
    return contexts, queries, keys, values, torch.randn(sum(queries), kv_heads * group, d, generator=g).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mixed_step_matches_attention_over_the_whole_context(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through `paged_attention`: the cached tokens sit in shuffled blocks, the step's own K/V are written by it; each
    row equals causal attention over its sequence's full K/V, with the kernel and with the gather path."""
    contexts, queries, keys, values, q = _mixed_step(dtype)
    kv_heads, d, block_size = 3, 64, 16
    per_seq = [-(-n // block_size) for n in contexts]
    order = torch.randperm(sum(per_seq) + 4, generator=torch.Generator().manual_seed(5)).tolist()
    tables = [order[sum(per_seq[:i]) : sum(per_seq[: i + 1])] for i in range(len(contexts))]
    new_k = torch.cat([k[n - ql :] for k, n, ql in zip(keys, contexts, queries, strict=True)])
    new_v = torch.cat([v[n - ql :] for v, n, ql in zip(values, contexts, queries, strict=True)])

    expected = []
    for i, (n, ql) in enumerate(zip(contexts, queries, strict=True)):
        rows = q[sum(queries[:i]) : sum(queries[: i + 1])].float().transpose(0, 1)[None]  # [1, H, ql, d]
        kf = keys[i].float().repeat_interleave(3, dim=1).transpose(0, 1)[None]
        vf = values[i].float().repeat_interleave(3, dim=1).transpose(0, 1)[None]
        mask = torch.arange(n)[None, :] <= torch.arange(n - ql, n)[:, None]
        attended = torch.nn.functional.scaled_dot_product_attention(rows, kf, vf, attn_mask=mask)
        expected.append(attended[0].transpose(0, 1))
    want = torch.cat(expected).reshape(sum(queries), -1)

    for path in ("kernel", "gather"):
        monkeypatch.setenv("INFLEET_CPU_ATTENTION", path)
        assert dispatch.cpu_decode_attention(q, torch.empty(0, dtype=dtype)) == (path == "kernel")
        cache = KVCache.allocate(len(order), block_size, kv_heads, d, dtype)
        for i, n in enumerate(contexts):  # the tokens cached before this step
            cached = n - queries[i]
            flat = torch.tensor([tables[i][t // block_size] * block_size + t % block_size for t in range(cached)])
            cache.k.view(-1, kv_heads, d).index_copy_(0, flat.long(), keys[i][:cached])
            cache.v.view(-1, kv_heads, d).index_copy_(0, flat.long(), values[i][:cached])
        meta = AttentionMetadata.build(queries, contexts, tables, block_size)
        assert [seg.by_rows for seg in meta.prefills] == [False, True, True, False]
        got = paged_attention(q, new_k, new_v, cache, meta)
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol, msg=f"{path} path")


def test_without_a_compiler_the_runtime_gathers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No cached library and no `cc`: one warning, `available()` is False, and decode attention takes the gather."""
    monkeypatch.setenv("INFLEET_KERNEL_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    cpu_native.library.cache_clear()
    try:
        with caplog.at_level(logging.WARNING):
            assert not cpu_attention.available()
            assert not dispatch.cpu_decode_attention(torch.empty(0), torch.empty(0))
            assert dispatch.attention_backend(torch.device("cpu")) == "torch-sdpa"
        warnings = [r.message for r in caplog.records if "the runtime uses PyTorch's paths" in r.message]
        assert len(warnings) == 1, warnings
    finally:
        monkeypatch.undo()
        cpu_native.library.cache_clear()
    assert dispatch.attention_backend(torch.device("cpu")) == "cpu-paged-decode (C), torch-sdpa prefill"


def test_loading_the_kernel_leaves_denormals_alone() -> None:
    """The library is compiled with -ffast-math but not linked with it: crtfastmath.o would switch the whole process
    to flush-to-zero / denormals-are-zero when the library loads, changing every other op's numerics."""
    assert cpu_native.library() is not None
    assert sys.float_info.min / 2 > 0.0
    assert torch.tensor([1e-40]).mul(1.0).item() != 0.0


def test_build_into_a_directory_is_atomic_and_reused(tmp_path: Path) -> None:
    path = cpu_native.build(tmp_path)
    assert path.parent == tmp_path and path.name == cpu_native.library_name()
    mtime = path.stat().st_mtime_ns
    assert cpu_native.build(tmp_path) == path and path.stat().st_mtime_ns == mtime  # found, not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind
