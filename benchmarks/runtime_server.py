"""What the runtime's HTTP layer costs: one workload through `AsyncEngine` in-process and through a real server.

The same SmolLM2 engine settings on both sides; the HTTP side is `python -m infleet.runtime serve` read with
streaming `/v1/completions` (SSE). Rounds alternate so that drift on this shared machine hits both sides alike.
Reports output tokens/s, TTFT and inter-token latency (p50/p99) per side and concurrency, and the HTTP/in-process
ratios.

    python benchmarks/runtime_server.py [--concurrency 1 8] [--requests 16] [--max-tokens 32] [--rounds 2]
                                        [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from infleet.runtime.config import EngineConfig
from infleet.runtime.engine.engine import AsyncEngine
from infleet.runtime.engine.sampler import SamplingParams
from infleet.runtime.loader.smollm2 import smollm2_gguf
from infleet.runtime.server.launch import ServerProcess

PROMPTS = [
    "Once upon a time",
    "Write a haiku about the sea.",
    "The three laws of thermodynamics are",
    "def fibonacci(n):",
    "Explain why the sky is blue in one paragraph.",
    "List five fruits:",
    "The capital of France is",
    "In 1969, the first humans",
]
MAX_MODEL_LEN = 1024

# one request's timings: (ttft, [gaps between tokens], tokens)
Timing = tuple[float, list[float], int]


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def in_process(engine: AsyncEngine, prompt: str, max_tokens: int, request_id: str) -> Timing:
    ids = engine.tokenizer.encode(prompt)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    start = last = time.perf_counter()
    ttft, gaps, tokens = 0.0, [], 0
    async for out in engine.generate(ids, params, request_id):
        now = time.perf_counter()
        if out.new_token_ids:
            if tokens == 0:
                ttft = now - start
            else:
                gaps.append(now - last)
            last = now
            tokens += len(out.new_token_ids)
    return ttft, gaps, tokens


async def over_http(client: httpx.AsyncClient, prompt: str, max_tokens: int) -> Timing:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True}
    body["stream_options"] = {"include_usage": True}
    start = last = time.perf_counter()
    ttft, gaps, events, tokens = 0.0, [], 0, 0
    async with client.stream("POST", "/v1/completions", json=body) as r:
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
                continue
            now = time.perf_counter()
            if events == 0:
                ttft = now - start
            else:
                gaps.append(now - last)
            last = now
            events += 1
    return ttft, gaps, tokens


async def run_round(request: Callable[[int], Awaitable[Timing]], n: int, concurrency: int) -> dict[str, float]:
    queue = list(range(n))
    timings: list[Timing] = []

    async def worker() -> None:
        while queue:
            timings.append(await request(queue.pop()))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    ttfts = [t[0] for t in timings]
    itls = [g for t in timings for g in t[1]]
    return {
        "output_tokens_per_s": sum(t[2] for t in timings) / elapsed,
        "ttft_p50_s": quantile(ttfts, 0.5),
        "ttft_p99_s": quantile(ttfts, 0.99),
        "itl_p50_s": quantile(itls, 0.5),
        "itl_p99_s": quantile(itls, 0.99),
    }


def merge(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    model = smollm2_gguf()
    engine = AsyncEngine.from_config(EngineConfig(model=str(model), max_model_len=MAX_MODEL_LEN))
    engine.start()
    server = ServerProcess(model, "--max-model-len", str(MAX_MODEL_LEN)).start()
    results: dict[str, Any] = {"requests": args.requests, "max_tokens": args.max_tokens, "concurrency": {}}
    counter = iter(range(10**9))
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=600) as client:
            for concurrency in args.concurrency:
                sides: dict[str, list[dict[str, float]]] = {"in_process": [], "http": []}
                for _ in range(args.rounds):

                    async def direct(i: int) -> Timing:
                        prompt = PROMPTS[i % len(PROMPTS)]
                        return await in_process(engine, prompt, args.max_tokens, f"bench-{next(counter)}")

                    async def http(i: int) -> Timing:
                        return await over_http(client, PROMPTS[i % len(PROMPTS)], args.max_tokens)

                    sides["in_process"].append(await run_round(direct, args.requests, concurrency))
                    sides["http"].append(await run_round(http, args.requests, concurrency))
                merged = {side: merge(rounds) for side, rounds in sides.items()}
                merged["http_over_in_process"] = {
                    k: merged["http"][k] / merged["in_process"][k] for k in merged["http"]
                }
                results["concurrency"][str(concurrency)] = merged
    finally:
        server.stop()
        await engine.shutdown()
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args()
    results = asyncio.run(main_async(args))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runtime_server.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'conc':>4} {'side':>10} {'tok/s':>8} {'ttft p50':>9} {'ttft p99':>9} {'itl p50':>8} {'itl p99':>8}")
    for concurrency, sides in results["concurrency"].items():
        for side in ("in_process", "http", "http_over_in_process"):
            r = sides[side]
            print(
                f"{concurrency:>4} {side[:10]:>10} {r['output_tokens_per_s']:8.2f} {r['ttft_p50_s']:9.3f} "
                f"{r['ttft_p99_s']:9.3f} {r['itl_p50_s']:8.3f} {r['itl_p99_s']:8.3f}"
            )


if __name__ == "__main__":
    main()
