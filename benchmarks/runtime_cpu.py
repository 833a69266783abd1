"""infleet's engine against HF transformers (batched generate) and llama-cpp-python, side by side on the CPU.

Same model (the SmolLM2 GGUF), same requests: prompt lengths drawn from the Azure LLM code trace (Splitwise,
ISCA 2024, CC-BY 4.0), scaled from the trace's longest context down to `--context` tokens; output lengths from the
trace, clipped to [--min-out, --max-out]; greedy, end-of-sequence ignored so every runtime produces the same
number of tokens. A closed loop of `concurrency` clients for each level:

- infleet: `AsyncEngine` (continuous batching, paged KV cache) with `concurrency` concurrent streams.
- transformers: static batches of `concurrency` requests, left-padded, one `generate` per batch (each request counts
  only the tokens it asked for; a batch lasts as long as its longest request).
- llama-cpp-python: one `Llama` object (it serves one request at a time); skipped when it is not installed.

Reports output tokens/s, TTFT p50/p99, inter-token latency p50/p99, and at concurrency 1 the model-bandwidth
utilisation (bytes a decode step must read, weights + KV, times decode steps/s, over the machine's read bandwidth
measured here). Writes `benchmarks/results/runtime_cpu.json` and the table under `## Runtime on CPU` in
`docs/benchmarks.md`.

    python benchmarks/runtime_cpu.py [--concurrency 1 8 32] [--requests 8 16 32] [--threads 1] [--context 512]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import itertools
import json
import math
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from infleet.runtime.engine.engine import AsyncEngine, LLMEngine, apply_tier
from infleet.runtime.engine.model_runner import kv_bytes_per_token
from infleet.runtime.engine.sampler import SamplingParams
from infleet.runtime.loader import load_model
from infleet.runtime.loader.smollm2 import smollm2_gguf
from infleet.runtime.quant.tiers import model_bytes

ROOT = Path(__file__).resolve().parent.parent
TRACE = Path("/work/shared/traces/azure_llm_2023_code.csv")
WORDS = ["the", "of", "data", "function", "value", "return", "class", "model", "server", "cache", "queue", "and"]


# --- workload ----------------------------------------------------------------------------------------------------
def make_requests(tokenizer: Any, n: int, args: argparse.Namespace, seed: int) -> list[tuple[list[int], int]]:
    rows = list(csv.DictReader(TRACE.open()))
    longest = max(int(r["ContextTokens"]) for r in rows)
    rng = random.Random(seed)
    out = []
    for r in rng.sample(rows, n):
        length = max(4, math.ceil(int(r["ContextTokens"]) * args.context / longest))
        text = " ".join(rng.choice(WORDS) for _ in range(length))
        ids = tokenizer.encode(text)[:length]
        gen = min(max(int(r["GeneratedTokens"]), args.min_out), args.max_out)
        out.append((ids, gen))
    return out


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q / 100 * len(xs)) - 1))]


def summarize(ttfts: list[float], itls: list[float], tokens: int, wall: float, decode_steps_per_s: float) -> dict:
    return {
        "output_tokens": tokens,
        "wall_s": round(wall, 3),
        "output_tok_s": round(tokens / wall, 2),
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p99_s": percentile(ttfts, 99),
        "itl_p50_s": percentile(itls, 50),
        "itl_p99_s": percentile(itls, 99),
        "decode_steps_per_s": round(decode_steps_per_s, 3),
    }


# --- infleet -----------------------------------------------------------------------------------------------------
def run_infleet(engine: AsyncEngine, requests: list[tuple[list[int], int]], concurrency: int) -> dict:
    async def main() -> dict:
        engine.start()
        queue = list(enumerate(requests))
        ttfts: list[float] = []
        itls: list[float] = []
        tokens = 0

        async def client() -> None:
            nonlocal tokens
            while queue:
                i, (ids, gen) = queue.pop(0)
                params = SamplingParams(max_tokens=gen, temperature=0.0, ignore_eos=True)
                start = last = time.perf_counter()
                first = True
                async for out in engine.generate(ids, params, f"bench-{concurrency}-{i}-{time.monotonic_ns()}"):
                    now = time.perf_counter()
                    if first:
                        ttfts.append(now - start)
                        first = False
                    else:
                        itls.append(now - last)
                    last = now
                    tokens += len(out.new_token_ids)

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        steps = 1 / statistics.median(itls) if itls else 0.0
        return summarize(ttfts, itls, tokens, wall, steps)

    return asyncio.run(main())


# --- transformers ------------------------------------------------------------------------------------------------
def run_transformers(model: Any, requests: list[tuple[list[int], int]], concurrency: int, pad_id: int) -> dict:
    from transformers.generation.streamers import BaseStreamer

    class StepClock(BaseStreamer):
        """`generate` calls put() once with the prompt and then once per decoding step."""

        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, value: Any) -> None:
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    ttfts: list[float] = []
    itls: list[float] = []
    tokens = 0
    t0 = time.perf_counter()
    for b in range(0, len(requests), concurrency):
        batch = requests[b : b + concurrency]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids, _ in batch])
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids, _ in batch])
        clock = StepClock()
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                input_ids,
                attention_mask=mask,
                max_new_tokens=max(gen for _, gen in batch),
                min_new_tokens=max(gen for _, gen in batch),
                do_sample=False,
                pad_token_id=pad_id,
                streamer=clock,
            )
        steps = clock.times[1:]  # the first put() is the prompt
        for _, gen in batch:
            ttfts.append(steps[0] - start)
            itls.extend(b - a for a, b in itertools.pairwise(steps[:gen]))
            tokens += gen
    wall = time.perf_counter() - t0
    steps_per_s = 1 / statistics.median(itls) if itls else 0.0
    return summarize(ttfts, itls, tokens, wall, steps_per_s)


# --- llama-cpp-python --------------------------------------------------------------------------------------------
def run_llama_cpp(llm: Any, requests: list[tuple[list[int], int]], concurrency: int) -> dict:
    ttfts: list[float] = []
    itls: list[float] = []
    tokens = 0
    t0 = time.perf_counter()
    for ids, gen in requests:  # one request at a time: a single Llama object does not batch requests
        llm.reset()
        start = last = time.perf_counter()
        for n, _ in enumerate(llm.generate(ids, temp=0.0, top_k=1, reset=True)):
            now = time.perf_counter()
            (ttfts.append(now - start) if n == 0 else itls.append(now - last))
            last = now
            tokens += 1
            if n + 1 >= gen:
                break
    wall = time.perf_counter() - t0
    steps_per_s = 1 / statistics.median(itls) if itls else 0.0
    return summarize(ttfts, itls, tokens, wall, steps_per_s)


# --- bandwidth and MBU -------------------------------------------------------------------------------------------
def read_bandwidth(gib: float = 1.0) -> float:
    """Bytes/s for a streaming read (a sum over a buffer much larger than the caches); best of three."""
    x = torch.ones(int(gib * 2**30 / 4), dtype=torch.float32)
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        x.sum()
        best = max(best, x.numel() * 4 / (time.perf_counter() - t))
    return best


def decode_bytes(model: Any, kv_dtype: torch.dtype, mean_context: float) -> float:
    """What one batch-1 decode step reads: every weight once (the tied embedding once, as lm_head) plus the KV."""
    weights = model_bytes(model)  # quantized layers keep their weights in buffers; tied weights count once
    return weights + kv_bytes_per_token(model, kv_dtype) * mean_context


# --- report ------------------------------------------------------------------------------------------------------
def fmt(x: float | None, scale: float = 1.0, digits: int = 0) -> str:
    return "—" if x is None else f"{x * scale:.{digits}f}"


def write_docs(results: dict, path: Path) -> None:
    lines = [
        "## Runtime on CPU",
        "",
        f"`python benchmarks/runtime_cpu.py` ({results['setup']['date']}): SmolLM2-135M-Instruct GGUF, "
        f"{results['setup']['threads']} torch thread(s), fp32 weights (infleet's bf16 tier is the dequantized float "
        f"weights; other infleet rows are quantized tiers), infleet step budget {results['setup']['max_batch_tokens']} "
        "tokens, prompts from the Azure code trace "
        f"scaled to {results['setup']['context']} tokens (mean {results['setup']['mean_prompt_tokens']:.0f}), "
        f"greedy, {results['setup']['min_out']}-{results['setup']['max_out']} output tokens. "
        f"Machine read bandwidth measured at {results['setup']['read_bandwidth_gbs']:.1f} GB/s (shared, loaded).",
        "",
        "| runtime | concurrency | requests | output tok/s | TTFT p50 / p99 (ms) | ITL p50 / p99 (ms) | MBU |",
        "|---|---|---|---|---|---|---|",
    ]
    for level in results["levels"]:
        for name, r in level["runtimes"].items():
            if r.get("skipped"):
                lines.append(f"| {name} | {level['concurrency']} | — | skipped: {r['skipped']} | | | |")
                continue
            mbu = f"{r['mbu'] * 100:.0f}%" if r.get("mbu") is not None else ""
            lines.append(
                f"| {name} | {level['concurrency']} | {level['requests']} | {r['output_tok_s']:.1f} | "
                f"{fmt(r['ttft_p50_s'], 1e3)} / {fmt(r['ttft_p99_s'], 1e3)} | "
                f"{fmt(r['itl_p50_s'], 1e3)} / {fmt(r['itl_p99_s'], 1e3)} | {mbu} |"
            )
    lines += ["", "Ratios (infleet / peer): " + "; ".join(results["ratios_text"]) + ".", ""]
    section = "\n".join(lines)
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    start = text.find("## Runtime on CPU")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end + 1 :] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, nargs="+", default=[4, 16, 32], help="requests per concurrency level")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--context", type=int, default=512, help="the trace's longest prompt maps to this many tokens")
    ap.add_argument("--min-out", type=int, default=16)
    ap.add_argument("--max-out", type=int, default=48)
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--max-batch-tokens", type=int, default=128, help="infleet's per-step token budget")
    ap.add_argument(
        "--tiers",
        nargs="+",
        default=["bf16"],
        help="infleet rows: bf16 (fp32 weights), bf16-native (bf16 weights), int8, int4, fp8",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "runtime_cpu.json")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args(argv)
    if len(args.requests) != len(args.concurrency):
        ap.error("--requests needs one count per --concurrency level")
    torch.set_num_threads(args.threads)
    gguf_path = smollm2_gguf()

    model, config, tokenizer = load_model(gguf_path, dtype=torch.float32)
    engines: dict[str, AsyncEngine] = {}
    for tier in args.tiers:
        # "bf16" is the float tier: fp32 weights (the like-for-like row), "bf16-native" the same weights held in bf16
        if tier == "bf16":
            tier_model = model
        elif tier == "bf16-native":
            tier_model = load_model(gguf_path, dtype=torch.bfloat16)[0]
        else:
            tier_model = apply_tier(load_model(gguf_path, dtype=torch.float32)[0], tier)
        llm_engine = LLMEngine(
            tier_model, config, tokenizer, max_model_len=2048, max_num_seqs=64, max_batch_tokens=args.max_batch_tokens
        )
        name = "infleet" if tier == "bf16" else f"infleet-{tier}"
        engines[name] = AsyncEngine.from_engine(llm_engine, tier=tier.removesuffix("-native"))
    workloads = {
        c: make_requests(tokenizer, n, args, seed=c) for c, n in zip(args.concurrency, args.requests, strict=True)
    }
    all_prompts = [len(ids) for w in workloads.values() for ids, _ in w]
    bandwidth = read_bandwidth()

    hf_model = None
    if not args.skip_transformers:
        import transformers

        hf_model = transformers.AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        ).eval()
    try:
        import llama_cpp

        llama = llama_cpp.Llama(str(gguf_path), n_ctx=2048, n_threads=args.threads, n_batch=512, verbose=False)
        llama_skip = None
    except ImportError:
        llama, llama_skip = None, "llama-cpp-python is not installed"

    results: dict[str, Any] = {
        "setup": {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "model": gguf_path.name,
            "threads": args.threads,
            "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg()[0],
            "context": args.context,
            "max_batch_tokens": args.max_batch_tokens,
            "tiers": args.tiers,
            "mean_prompt_tokens": statistics.mean(all_prompts),
            "min_out": args.min_out,
            "max_out": args.max_out,
            "read_bandwidth_gbs": bandwidth / 1e9,
        },
        "levels": [],
    }
    ratios_text = []
    for c, reqs in workloads.items():
        print(f"== concurrency {c}: {len(reqs)} requests", flush=True)
        level: dict[str, Any] = {"concurrency": c, "requests": len(reqs), "runtimes": {}}
        for name, engine in engines.items():
            level["runtimes"][name] = run_infleet(engine, reqs, c)
            print(f"  {name}", level["runtimes"][name], flush=True)
        if hf_model is not None:
            level["runtimes"]["transformers"] = run_transformers(hf_model, reqs, c, pad_id=config.eos_token_ids[0])
            print("  transformers", level["runtimes"]["transformers"], flush=True)
        if llama is not None:
            level["runtimes"]["llama-cpp-python"] = run_llama_cpp(llama, reqs, c)
            print("  llama-cpp-python", level["runtimes"]["llama-cpp-python"], flush=True)
        else:
            level["runtimes"]["llama-cpp-python"] = {"skipped": llama_skip}
        if c == 1:
            mean_ctx = statistics.mean(len(ids) + gen / 2 for ids, gen in reqs)
            per_step = {
                "infleet": decode_bytes(model, torch.float32, mean_ctx),
                "transformers": decode_bytes(model, torch.float32, mean_ctx),
                # the Q4_1/Q8_0 file as stored is what llama.cpp reads per token
                "llama-cpp-python": gguf_path.stat().st_size + kv_bytes_per_token(model, torch.float16) * mean_ctx,
            }
            for name, engine in engines.items():
                kv_dtype = engine.engine.runner.kv_caches[0].k.dtype
                per_step[name] = decode_bytes(engine.engine.model, kv_dtype, mean_ctx)
            for name, r in level["runtimes"].items():
                if not r.get("skipped"):
                    r["bytes_per_step"] = per_step[name]
                    r["mbu"] = per_step[name] * r["decode_steps_per_s"] / bandwidth
        for name in engines:
            ours = level["runtimes"][name]
            for peer, r in level["runtimes"].items():
                if peer.startswith("infleet") or r.get("skipped"):
                    continue
                ratio = {
                    "throughput": ours["output_tok_s"] / r["output_tok_s"],
                    "ttft_p99": ours["ttft_p99_s"] / r["ttft_p99_s"],
                }
                level.setdefault("ratios", {})[f"{name} vs {peer}"] = ratio
                ratios_text.append(
                    f"c={c} {name} vs {peer}: throughput x{ratio['throughput']:.2f}, TTFT p99 x{ratio['ttft_p99']:.2f}"
                )
        results["levels"].append(level)
    results["ratios_text"] = ratios_text
    results["engine_stats"] = {name: vars(engine.stats()) for name, engine in engines.items()}
    for engine in engines.values():
        asyncio.run(engine.shutdown())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    write_docs(results, args.docs)
    print("\n".join(ratios_text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
