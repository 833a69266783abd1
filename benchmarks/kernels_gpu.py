"""Time infleet's Triton kernels against the torch/cuBLAS bf16 baseline and the memory-bandwidth roofline.

    python benchmarks/kernels_gpu.py [--out benchmarks/results/kernels_gpu.json] [--peak-gbs N]

Decode batches 1..64. For each kernel: its time, the torch baseline's time, the speed-up, and the roofline floor
(bytes the kernel must move / peak bandwidth; peak is measured with a device-to-device copy unless --peak-gbs is
given). Weight-only int8/int4 GEMMs should approach 2x/4x over bf16 at small batches, where both are memory-bound
(Marlin reaches near 4x for int4 up to batch 16-32). Needs a CUDA device: on CPU it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

BATCHES = (1, 2, 4, 8, 16, 32, 64)
# (name, N, K): Llama-3-8B's projections and SmolLM2-135M's MLP.
GEMM_SHAPES = (("llama8b.qkv", 6144, 4096), ("llama8b.gate_up", 28672, 4096), ("llama8b.down", 4096, 14336),
               ("smollm2.gate", 1536, 576))  # fmt: skip


def bench(fn: Callable[[], Any]) -> float:
    """Median milliseconds (Triton's do_bench flushes L2 between runs, so memory-bound numbers are honest)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def peak_bandwidth_gbs() -> float:
    x = torch.empty(512 * 2**20, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = bench(lambda: y.copy_(x))
    return 2 * x.numel() / (ms * 1e-3) / 1e9


def row(name: str, batch: int, ms: float, base_ms: float, nbytes: int, peak: float) -> dict[str, Any]:
    floor_ms = nbytes / (peak * 1e9) * 1e3
    r = {"kernel": name, "batch": batch, "ms": ms, "baseline_ms": base_ms, "speedup": base_ms / ms,
         "roofline_ms": floor_ms, "of_roofline": floor_ms / ms}  # fmt: skip
    print(f"{name:28s} b={batch:<3d} {ms * 1e3:9.1f} us  torch {base_ms * 1e3:9.1f} us  x{base_ms / ms:5.2f}  "
          f"roofline {floor_ms * 1e3:8.1f} us ({floor_ms / ms:4.0%})")  # fmt: skip
    return r


def gemm_rows(peak: float) -> list[dict[str, Any]]:
    from infleet.runtime.kernels.dequant_gemm import int4_gemm_triton, int8_gemm_triton
    from infleet.runtime.quant import formats as F

    rows = []
    for name, n, k in GEMM_SHAPES:
        w = torch.randn(n, k, device="cuda") * 0.02
        w16 = w.to(torch.bfloat16)
        q8, q4 = F.quantize_int8(w), F.quantize_int4(w)
        for b in BATCHES:
            x = torch.randn(b, k, device="cuda", dtype=torch.bfloat16)
            io = 2 * b * (k + n)
            base = bench(lambda: torch.nn.functional.linear(x, w16))  # noqa: B023
            rows.append(row(f"{name} bf16", b, base, base, n * k * 2 + io, peak))
            t8 = bench(lambda: int8_gemm_triton(x, q8.weight, q8.scale))  # noqa: B023
            rows.append(row(f"{name} int8", b, t8, base, n * k + 4 * n + io, peak))
            t4 = bench(lambda: int4_gemm_triton(x, q4.packed, q4.scale, q4.offset, q4.group_size))  # noqa: B023
            rows.append(row(f"{name} int4 g{q4.group_size}", b, t4, base, n * k // 2 + 8 * q4.scale.numel() + io, peak))
    return rows


def elementwise_rows(peak: float) -> list[dict[str, Any]]:
    from infleet.runtime.kernels.activation import silu_and_mul_triton
    from infleet.runtime.kernels.rmsnorm import rms_norm_triton

    rows = []
    d, f = 4096, 14336
    for b in BATCHES:
        x, r = (torch.randn(b, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        w = torch.rand(d, device="cuda", dtype=torch.bfloat16)

        def torch_norm(x: torch.Tensor = x, r: torch.Tensor = r, w: torch.Tensor = w) -> torch.Tensor:
            h = x + r
            hf = h.float()
            return (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(h.dtype) * w

        base = bench(torch_norm)
        rows.append(row("add_rms_norm d4096", b, bench(lambda: rms_norm_triton(x, w, 1e-5, r)), base, 8 * b * d, peak))  # noqa: B023
        g, u = (torch.randn(b, f, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        base = bench(lambda: torch.nn.functional.silu(g) * u)  # noqa: B023
        rows.append(row("silu_and_mul f14336", b, bench(lambda: silu_and_mul_triton(g, u)), base, 6 * b * f, peak))  # noqa: B023
    return rows


def attention_rows(peak: float, context: int = 1024) -> list[dict[str, Any]]:
    from infleet.runtime.kernels.paged_attention import paged_attention_triton

    rows = []
    heads, kv_heads, d, block = 32, 8, 128, 16
    for b in BATCHES:
        per_seq = context // block
        k_cache = torch.randn(b * per_seq, block, kv_heads, d, device="cuda", dtype=torch.bfloat16)
        v_cache = torch.randn_like(k_cache)
        tables = torch.randperm(b * per_seq, device="cuda", dtype=torch.int32).view(b, per_seq)
        lens = torch.full((b,), context, device="cuda", dtype=torch.int32)
        q = torch.randn(b, heads, d, device="cuda", dtype=torch.bfloat16)

        def torch_attention(q: torch.Tensor = q, tables: torch.Tensor = tables) -> torch.Tensor:
            k = k_cache[tables.long()].view(b, -1, kv_heads, d).transpose(1, 2)  # noqa: B023 (gather, then SDPA)
            v = v_cache[tables.long()].view(b, -1, kv_heads, d).transpose(1, 2)  # noqa: B023
            return torch.nn.functional.scaled_dot_product_attention(q[:, :, None], k, v, enable_gqa=True)

        base = bench(torch_attention)
        t = bench(lambda: paged_attention_triton(q, k_cache, v_cache, tables, lens, d**-0.5))  # noqa: B023
        rows.append(row(f"paged_attention ctx{context}", b, t, base, 2 * k_cache.numel() * 2, peak))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/results/kernels_gpu.json")
    p.add_argument("--peak-gbs", type=float, default=None, help="memory bandwidth for the roofline (default: measured)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("kernels_gpu: needs a CUDA GPU (none found); nothing to time on this machine.")
        return 0
    peak = args.peak_gbs or peak_bandwidth_gbs()
    print(f"{torch.cuda.get_device_name()}: peak bandwidth {peak:.0f} GB/s")
    rows = gemm_rows(peak) + elementwise_rows(peak) + attention_rows(peak)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "peak_gbs": peak, "rows": rows}, indent=2))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
