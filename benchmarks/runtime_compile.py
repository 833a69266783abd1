"""Does `torch.compile` pay on the CPU decode step? Eager against compiled, interleaved, with the compile time.

The compiled variant compiles each decoder layer's two halves around paged attention with inductor
(`dynamic=True`; the layer is an argument, not a constant, so one graph can serve every layer and batch size):
before it, the input norm, the q/k/v projections and RoPE; after it, the output projection, the fused add + norm,
the MLP and the residual. Paged attention stays eager (its metadata is Python). This is the experiment the runtime
does not ship: the runtime keeps eager unless this benchmark shows the compiled step faster in every round.

Each round runs every (variant, tier, batch) in its own process, in an order rotated per round, so that a compiled
graph never leaks into an eager measurement and slow minutes of a shared machine fall on both variants. A process
loads the tier as served, starts `batch` sequences of `--prompt-tokens` tokens, runs their prefill, takes one decode
step (where the compile happens, timed as `warmup_s`), then times `--steps` decode steps (the median step).
Every process starts with an empty inductor cache, as a fresh pod would. Writes
`benchmarks/results/runtime_compile.json`; docs/performance.md quotes it.

    python benchmarks/runtime_compile.py [--tiers int4 int8 bf16] [--batches 1 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from infleet.runtime.model import llama
from infleet.runtime.model.attention import AttentionMetadata, KVCache, paged_attention

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("eager", "compiled")


def before_attention(layer: llama.DecoderLayer, x: Tensor, rope: llama.RopeTables) -> tuple[Tensor, Tensor, Tensor]:
    """x [T, hidden] -> q [T, H, D], k and v [T, Hkv, D]."""
    return layer.self_attn.project(layer.input_layernorm(x), rope)


def after_attention(layer: llama.DecoderLayer, attn: Tensor, x: Tensor) -> Tensor:
    """attention output [T, H * D] and the layer's input x [T, hidden] -> the layer's output [T, hidden]."""
    h, x = layer.post_attention_layernorm.add_forward(layer.self_attn.o_proj(attn), x)
    return x + layer.mlp(h)


def compile_layers() -> None:
    """Route every DecoderLayer.forward through compiled halves (what `DecoderLayer.forward` computes, split)."""
    before = torch.compile(before_attention, dynamic=True)
    after = torch.compile(after_attention, dynamic=True)

    def forward(
        self: llama.DecoderLayer,
        x: Tensor,
        rope: llama.RopeTables,
        cache: KVCache,
        meta: AttentionMetadata,
    ) -> Tensor:
        q, k, v = before(self, x, rope)
        return after(self, paged_attention(q, k, v, cache, meta), x)  # type: ignore[no-any-return]

    llama.DecoderLayer.forward = forward  # type: ignore[method-assign]


def measure(variant: str, tier: str, batch: int, prompt_tokens: int, steps: int) -> dict[str, Any]:
    """One process's figures: the prefill and one decode step (with the compile: `warmup_s`), `steps` timed steps."""
    from runtime_profile import decoding_engine  # type: ignore[import-not-found]

    from infleet.runtime.loader.smollm2 import smollm2_gguf
    from infleet.runtime.quant.profile import served_model

    if variant == "compiled":
        compile_layers()
    model, config, tokenizer = served_model(smollm2_gguf(), tier)
    start = time.perf_counter()
    engine = decoding_engine(model, config, tokenizer, tier, batch, prompt_tokens)  # prefill + one decode step
    first = time.perf_counter() - start
    walls = []
    for _ in range(steps):
        t = time.perf_counter()
        engine.step()
        walls.append(time.perf_counter() - t)
    return {"step_ms": statistics.median(walls) * 1e3, "warmup_s": first}


def spread(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiers", nargs="+", default=["int4", "int8", "bf16"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "runtime_compile.json")
    ap.add_argument("--one", nargs=3, metavar=("VARIANT", "TIER", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.one:  # a child process: one measurement, as JSON on stdout
        variant, tier, batch = args.one
        try:
            figures = measure(variant, tier, int(batch), args.prompt_tokens, args.steps)
        except Exception as e:  # a failed compile is a result of this benchmark, reported as such
            figures = {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0]}"}
        print(json.dumps(figures))
        return 0
    cases = [(v, t, b) for t in args.tiers for b in args.batches for v in VARIANTS]
    figures: dict[tuple[str, str, int], list[dict[str, Any]]] = {c: [] for c in cases}
    load_start = os.getloadavg()[0]
    for r in range(args.rounds):
        shift = r % len(VARIANTS)  # the variants take turns going first
        for t in args.tiers:
            for b in args.batches:
                for v in VARIANTS[shift:] + VARIANTS[:shift]:
                    common = ["--threads", str(args.threads), "--prompt-tokens", str(args.prompt_tokens)]
                    cmd = [sys.executable, __file__, "--one", v, t, str(b), "--steps", str(args.steps), *common]
                    with tempfile.TemporaryDirectory() as cache:  # a cold compile cache, as a fresh pod has
                        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "TORCHINDUCTOR_CACHE_DIR": cache}
                        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
                    figures[(v, t, b)].append(json.loads(done.stdout.strip().splitlines()[-1]))
                    last = figures[(v, t, b)][-1]
                    said = last.get("error") or f"step {last['step_ms']:.1f} ms, warm-up {last['warmup_s']:.1f} s"
                    print(f"round {r} {v:8s} {t} b={b}: {said}", flush=True)
    rows = []
    for t in args.tiers:
        for b in args.batches:
            eager, compiled = figures[("eager", t, b)], figures[("compiled", t, b)]
            failed = next((c["error"] for c in compiled if "error" in c), None)
            row: dict[str, Any] = {
                "tier": t,
                "batch": b,
                "eager_step_ms": spread([e["step_ms"] for e in eager]),
                "eager_warmup_s": spread([e["warmup_s"] for e in eager]),
            }
            if failed:
                rows.append({**row, "compiled_error": failed, "compiled_pays": False})
                continue
            ratios = [c["step_ms"] / e["step_ms"] for e, c in zip(eager, compiled, strict=True)]
            row |= {
                "compiled_step_ms": spread([c["step_ms"] for c in compiled]),
                "compiled_warmup_s": spread([c["warmup_s"] for c in compiled]),
                "compiled_over_eager": spread(ratios),  # per round: below 1 is compiled faster
                "compiled_pays": max(ratios) < 1.0,  # only when compiled was faster in every round
            }
            rows.append(row)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": commit.stdout.strip(),
        "cpu": _cpu_name(),
        "threads": args.threads,
        "torch": torch.__version__,
        "rounds": args.rounds,
        "steps": args.steps,
        "prompt_tokens": args.prompt_tokens,
        "load_average": {"start": load_start, "end": os.getloadavg()[0]},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for row in rows:
        head = f"{row['tier']} b={row['batch']}: eager {row['eager_step_ms']['median']:.1f} ms"
        if "compiled_error" in row:
            print(f"{head}; compiled fails: {row['compiled_error']}")
            continue
        ratio = row["compiled_over_eager"]
        print(
            f"{head}, compiled {row['compiled_step_ms']['median']:.1f} ms, ratio {ratio['median']:.2f} "
            f"({ratio['min']:.2f}-{ratio['max']:.2f}), warm-up {row['compiled_warmup_s']['median']:.1f} s against "
            f"{row['eager_warmup_s']['median']:.1f} s: {'pays' if row['compiled_pays'] else 'does not pay'}"
        )
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
