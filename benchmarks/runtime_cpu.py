"""infleet's engine against HF transformers (batched generate) and llama-cpp-python, side by side on the CPU.

Same model (the SmolLM2 GGUF), same requests: prompt lengths drawn from the Azure LLM code trace (Splitwise,
ISCA 2024, CC-BY 4.0), scaled from the trace's longest context down to `--context` tokens; output lengths from the
trace, clipped to [--min-out, --max-out]; greedy, end-of-sequence ignored so every runtime produces the same
number of tokens. A closed loop of `concurrency` clients for each level:

- infleet: `AsyncEngine` (continuous batching, paged KV cache) with `concurrency` concurrent streams.
- transformers: static batches of `concurrency` requests, left-padded, one `generate` per batch (each request counts
  only the tokens it asked for; a batch lasts as long as its longest request).
- llama-cpp-python: one `Llama` object (it serves one request at a time); skipped when it is not installed.

Each level runs every runtime `--repeats` times, taking turns (a rotated order each round), and reports each figure
as the median with its min-max: output tokens/s, TTFT p50/p99, inter-token latency p50/p99, and at concurrency 1 the
model-bandwidth utilisation (bytes a decode step must read, weights + KV, times decode steps/s, over the machine's
read bandwidth measured in the same run). Ratios (infleet / peer) are taken within each round, then summarised the
same way, and the goals of `docs/benchmarks.md` are checked against them. A machine busier than `--max-load-per-core`
(1-minute load average) is not measured: the run says so and writes nothing. Writes
`benchmarks/results/runtime_cpu.json` and the section `## Runtime on CPU` in `docs/benchmarks.md`.

    python benchmarks/runtime_cpu.py [--tiers bf16 int8 int4] [--concurrency 1 8 32] [--requests 4 16 32]
                                     [--repeats 3] [--threads 1] [--context 512] [--torch-tiers int4 ...]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import functools
import itertools
import json
import math
import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from infleet.autoscaler.simulator.trace import AZURE_CODE_TRACE
from infleet.runtime.config import EngineConfig
from infleet.runtime.engine.engine import AsyncEngine, LLMEngine
from infleet.runtime.engine.model_runner import kv_bytes_per_token
from infleet.runtime.engine.sampler import SamplingParams
from infleet.runtime.loader import load_model
from infleet.runtime.loader.smollm2 import smollm2_gguf
from infleet.runtime.quant.profile import read_bandwidth_gbs, served_model
from infleet.runtime.quant.tiers import model_bytes

ROOT = Path(__file__).resolve().parent.parent
TRACE = AZURE_CODE_TRACE
TIERS = ["fp32", "bf16", "int8", "int4", "fp8"]  # "fp32": the float weights in fp32 (transformers' precision)
# an infleet row on PyTorch's paths alone, without infleet's C kernels for the CPU (runtime/kernels/cpu_native.py):
# decode attention gathers the paged cache, int8 logits go through float chunks
TORCH_ONLY = "-torch"
TORCH_ONLY_ENV = {"INFLEET_CPU_ATTENTION": "gather", "INFLEET_CPU_LOGITS": "torch"}
TORCH_ONLY_WEIGHTS = ("INFLEET_CPU_WOQ", "torch")  # read when the tier's layers are built (runtime/kernels/cpu_woq.py)
ORDER = [*(f"infleet-{t}{g}" for t in TIERS for g in ("", TORCH_ONLY)), "transformers", "llama-cpp-python"]
METRICS = ("output_tok_s", "ttft_p50_s", "ttft_p99_s", "itl_p50_s", "itl_p99_s", "mbu")
LLAMA = "llama-cpp-python"
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
def run_infleet(
    engine: AsyncEngine, requests: list[tuple[list[int], int]], concurrency: int, native: bool = True
) -> dict:
    """`native=False`: this run on PyTorch's paths alone (TORCH_ONLY_ENV, read by the runtime at every call)."""
    os.environ.update({} if native else TORCH_ONLY_ENV)
    try:
        return _run_infleet(engine, requests, concurrency)
    finally:
        for key in TORCH_ONLY_ENV:
            os.environ.pop(key, None)


def _run_infleet(engine: AsyncEngine, requests: list[tuple[list[int], int]], concurrency: int) -> dict:
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
class LlamaCppBatched:
    """Continuous batching over llama-cpp-python's low-level API, the way llama.cpp's own server batches.

    llama-cpp-python's OpenAI server (`llama_cpp.server`) and its `Llama` object serve one request at a time (the
    server holds a lock per request), so they would measure queueing, not the engine. Its bindings do expose
    multi-sequence `llama_decode`: one KV sequence per client slot, and every step one batch with each running
    stream's next token first and then prompt tokens (chunked) up to `n_batch`, as llama-server fills its batches.
    Greedy: the argmax of each sampled row's logits.
    """

    def __init__(self, path: Path, threads: int, n_batch: int) -> None:
        import logging

        import llama_cpp

        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp's load log goes through it
        self.lib = llama_cpp
        self.threads = threads
        self.n_batch = n_batch
        llama_cpp.llama_backend_init()
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), llama_cpp.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp cannot load {path}")
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))

    def close(self) -> None:
        self.lib.llama_model_free(self.model)

    def run(self, requests: list[tuple[list[int], int]], concurrency: int) -> dict:
        import numpy as np

        lib = self.lib
        params = lib.llama_context_default_params()
        params.n_ctx = concurrency * (max(len(ids) + gen for ids, gen in requests) + 16)  # a slot's share each
        params.n_batch = params.n_ubatch = self.n_batch
        params.n_seq_max = concurrency
        params.n_threads = params.n_threads_batch = self.threads
        ctx = lib.llama_init_from_model(self.model, params)
        if not ctx:
            raise RuntimeError("llama.cpp cannot create a context")
        memory = lib.llama_get_memory(ctx)
        batch = lib.llama_batch_init(self.n_batch, 0, 1)
        queue = list(requests)
        self.outputs: list[list[int]] = []  # generated ids, in the order requests finish (for a sanity check)
        free = list(range(concurrency))
        # per slot: [tokens so far, prompt length, tokens computed, tokens wanted, start time, last token time]
        active: dict[int, list[Any]] = {}
        ttfts: list[float] = []
        itls: list[float] = []
        tokens = 0
        t0 = time.perf_counter()
        try:
            while queue or active:
                while queue and free:  # a closed loop: a client sends its next request once the last one ended
                    ids, gen = queue.pop(0)
                    active[free.pop(0)] = [list(ids), len(ids), 0, gen, time.perf_counter(), None]
                rows: list[tuple[int, int, int]] = []  # (slot, token, position)
                sampled: list[tuple[int, int]] = []  # (slot, row in the batch)
                for slot, st in active.items():  # decodes first
                    if st[2] == len(st[0]) - 1 and st[2] >= st[1]:
                        sampled.append((slot, len(rows)))
                        rows.append((slot, st[0][-1], st[2]))
                for slot, st in active.items():  # then prompt chunks, while the batch has room
                    if st[2] < st[1] and len(rows) < self.n_batch:
                        n = min(st[1] - st[2], self.n_batch - len(rows))
                        rows.extend((slot, st[0][st[2] + k], st[2] + k) for k in range(n))
                        if st[2] + n == st[1]:
                            sampled.append((slot, len(rows) - 1))
                batch.n_tokens = len(rows)
                want = {r for _, r in sampled}
                for i, (slot, tok, pos) in enumerate(rows):
                    batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, pos, 1
                    batch.seq_id[i][0] = slot
                    batch.logits[i] = i in want
                if lib.llama_decode(ctx, batch) != 0:
                    raise RuntimeError("llama_decode failed")
                now = time.perf_counter()
                for slot, _, _ in rows:
                    active[slot][2] += 1
                for slot, row in sampled:
                    logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, row), shape=(self.n_vocab,))
                    st = active[slot]
                    st[0].append(int(logits.argmax()))
                    (ttfts.append(now - st[4]) if st[5] is None else itls.append(now - st[5]))
                    st[5] = now
                    tokens += 1
                    if len(st[0]) - st[1] >= st[3]:
                        self.outputs.append(st[0][st[1] :])
                        lib.llama_memory_seq_rm(memory, slot, -1, -1)
                        del active[slot]
                        free.append(slot)
        finally:
            lib.llama_batch_free(batch)
            lib.llama_free(ctx)
        wall = time.perf_counter() - t0
        steps_per_s = 1 / statistics.median(itls) if itls else 0.0
        return summarize(ttfts, itls, tokens, wall, steps_per_s)


# --- bandwidth and MBU -------------------------------------------------------------------------------------------
def decode_bytes(model: Any, kv_dtype: torch.dtype, mean_context: float) -> float:
    """What one batch-1 decode step reads: every weight once (the tied embedding once, as lm_head) plus the KV."""
    weights = model_bytes(model)  # quantized layers keep their weights in buffers; tied weights count once
    return weights + kv_bytes_per_token(model, kv_dtype) * mean_context


# --- summaries, ratios and goals ----------------------------------------------------------------------------------
def spread(xs: list[float]) -> dict[str, float]:
    """Median with min and max: what every figure of this benchmark reports."""
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def summarise(runs: list[dict]) -> dict:
    """One runtime at one level: each metric's spread over the rounds (a metric some round lacks is left out)."""
    out: dict[str, Any] = {"runs": runs}
    for key in METRICS:
        xs = [r[key] for r in runs if r.get(key) is not None]
        if len(xs) == len(runs):
            out[key] = spread(xs)
    return out


def ratios(ours: list[dict], peer: list[dict]) -> dict[str, dict[str, float]]:
    """infleet / peer within each round (the same load on both), then their spread. Throughput: higher is better;
    latencies: lower is better."""
    out = {}
    for key in METRICS[:-1]:
        xs = [a[key] / b[key] for a, b in zip(ours, peer, strict=True) if a.get(key) and b.get(key)]
        if len(xs) == len(ours):
            out[key.removesuffix("_s")] = spread(xs)
    return out


def check_goals(levels: list[dict]) -> list[dict]:
    """The goals `docs/benchmarks.md` states, each computed from this run: met, not met, or not measured (None)."""
    by_c = {level["concurrency"]: level for level in levels}

    def ratio(c: int, name: str, peer: str, key: str) -> float | None:
        r = by_c.get(c, {}).get("ratios", {}).get(f"{name} vs {peer}", {}).get(key)
        return None if r is None else r["median"]

    goals = []
    for tier, floor in (("int4", 1.0), ("int8", 0.8)):
        x = ratio(1, f"infleet-{tier}", LLAMA, "output_tok")
        goals.append({
            "goal": f"{tier} tier at concurrency 1: >= {floor:.1f}x llama.cpp output tok/s",
            "measured": None if x is None else f"x{x:.2f}",
            "met": None if x is None else x >= floor,
        })  # fmt: skip
    ours = [n for n in by_c.get(32, {}).get("runtimes", {}) if n.startswith("infleet") and not n.endswith(TORCH_ONLY)]
    for name in sorted(ours, key=ORDER.index):
        x = ratio(32, name, LLAMA, "output_tok")
        ttft = [ratio(32, name, peer, "ttft_p99") for peer in ("transformers", LLAMA)]
        measured = None if x is None or None in ttft else x >= 2.0 and all(t < 1.0 for t in ttft if t is not None)
        goals.append({
            "goal": f"{name.removeprefix('infleet-')} tier at concurrency 32: >= 2x llama.cpp throughput, TTFT p99 "
            "below both peers",
            "measured": None if measured is None else
            f"x{x:.2f} throughput, TTFT p99 x{ttft[0]:.2f} (transformers) x{ttft[1]:.2f} (llama.cpp)",
            "met": measured,
        })  # fmt: skip
    for name, r in by_c.get(1, {}).get("runtimes", {}).items():
        if name.startswith("infleet") and not name.endswith(TORCH_ONLY) and "mbu" in r:
            mbu = r["mbu"]["median"]
            goals.append({
                "goal": f"{name.removeprefix('infleet-')} tier batch-1 decode MBU >= 50%",
                "measured": f"{mbu * 100:.0f}%",
                "met": mbu >= 0.5,
            })  # fmt: skip
    return goals


# --- report ------------------------------------------------------------------------------------------------------
def fmt(x: float | None, scale: float = 1.0, digits: int = 0) -> str:
    return "—" if x is None else f"{x * scale:.{digits}f}"


def cell(r: dict, key: str, scale: float = 1.0, digits: int = 0, ranged: bool = False) -> str:
    if key not in r:
        return "—"
    s = r[key]
    text = fmt(s["median"], scale, digits)
    return f"{text} ({fmt(s['min'], scale, digits)}-{fmt(s['max'], scale, digits)})" if ranged else text


def write_docs(results: dict, path: Path) -> None:
    setup = results["setup"]
    lines = [
        "## Runtime on CPU",
        "",
        f"`make bench-runtime` (`python benchmarks/runtime_cpu.py`, {setup['date']}): SmolLM2-135M-Instruct GGUF "
        f"({setup['model']}), {setup['threads']} thread(s) for every runtime, prompts from the Azure code trace "
        f"scaled to {setup['context']} tokens (mean {setup['mean_prompt_tokens']:.0f}), greedy, "
        f"{setup['min_out']}-{setup['max_out']} output tokens, a closed loop of `concurrency` clients. "
        "infleet rows are its tiers as it serves them on a CPU (`bf16` in bf16; `int8`/`int4` with float32 "
        "activations; `fp32`, where present, is the GGUF's weights dequantized to float32 like transformers'); "
        "infleet: prefix caching off (every round sends the same prompts, and neither peer here reuses one "
        "request's prompt for another), step budget "
        f"{setup['max_batch_tokens']} tokens, decodes first, at most {setup['max_prefill_tokens']} prompt tokens per "
        "step. transformers: fp32, static batches of `concurrency`, one `generate` each. llama-cpp-python: "
        + (
            f"{setup['llama_cpp']}, the quantized weights as stored, continuous batching over its low-level "
            "multi-sequence `llama_decode` (its OpenAI server and `Llama` object serve one request at a time)"
            if setup.get("llama_cpp")
            else "not installed"
        )
        + (
            ". Rows ending `-torch` are the same tier on PyTorch's paths alone, without infleet's C kernels for the "
            "CPU (decode attention gathers each sequence's paged blocks into a padded copy for SDPA; int8 logits "
            "through float chunks), in the same rounds"
            if setup.get("torch_tiers")
            else ""
        )
        + f". Every level ran {setup['repeats']} rounds, the runtimes taking turns in a rotated order; each figure "
        "is the median of the rounds, throughput with its min-max. Machine read bandwidth measured at "
        f"{setup['read_bandwidth_gbs']:.1f} GB/s in the same run; load average {setup['load_average']:.2f} at the "
        f"start, {setup['load_average_end']:.2f} at the end, on {setup['cpu_count']} cores.",
        "",
        "| runtime | concurrency | requests | output tok/s | TTFT p50 / p99 (ms) | ITL p50 / p99 (ms) | MBU |",
        "|---|---|---|---|---|---|---|",
    ]
    for level in results["levels"]:
        for name, r in level["runtimes"].items():
            if r.get("skipped"):
                lines.append(f"| {name} | {level['concurrency']} | — | skipped: {r['skipped']} | | | |")
                continue
            mbu = f"{r['mbu']['median'] * 100:.0f}%" if "mbu" in r else ""
            lines.append(
                f"| {name} | {level['concurrency']} | {level['requests']} | {cell(r, 'output_tok_s', 1, 1, True)} | "
                f"{cell(r, 'ttft_p50_s', 1e3)} / {cell(r, 'ttft_p99_s', 1e3)} | "
                f"{cell(r, 'itl_p50_s', 1e3)} / {cell(r, 'itl_p99_s', 1e3)} | {mbu} |"
            )
    lines += ["", "Ratios (infleet / peer), median (min-max) of the rounds:", ""]
    for level in results["levels"]:
        for pair, r in level.get("ratios", {}).items():
            parts = [f"{k.replace('_', ' ')} {cell(r, k, 1, 2, True)}" for k in r]
            lines.append(f"- c={level['concurrency']} {pair}: " + ", ".join(parts))
    lines += ["", "Goals (computed by the benchmark from the medians above):", ""]
    for g in results["goals"]:
        verdict = "not measured" if g["met"] is None else "met" if g["met"] else "not met"
        lines.append(f"- {g['goal']}: **{verdict}**" + (f" ({g['measured']})" if g["measured"] else ""))
    lines.append("")
    section = "\n".join(lines)
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    start = text.find("## Runtime on CPU")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + ("\n" + text[end + 1 :] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, nargs="+", default=[4, 16, 32], help="requests per concurrency level")
    ap.add_argument("--repeats", type=int, default=3, help="rounds per level; figures are their median")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--context", type=int, default=512, help="the trace's longest prompt maps to this many tokens")
    ap.add_argument("--min-out", type=int, default=16)
    ap.add_argument("--max-out", type=int, default=32)
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--max-batch-tokens", type=int, default=128, help="infleet's per-step token budget")
    ap.add_argument(
        "--max-prefill-tokens", type=int, default=64, help="infleet's prompt tokens per step at most (after decodes)"
    )
    ap.add_argument("--llama-batch", type=int, default=512, help="llama.cpp's tokens per batch (n_batch)")
    ap.add_argument("--tiers", nargs="+", default=["bf16", "int8", "int4"], choices=TIERS, help="infleet rows")
    ap.add_argument(
        "--torch-tiers",
        nargs="*",
        default=[],
        choices=TIERS,
        help="also run these tiers on PyTorch's paths alone, without infleet's C kernels for the CPU",
    )
    ap.add_argument(
        "--max-load-per-core", type=float, default=0.5, help="do not measure above this 1-minute load average per core"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "runtime_cpu.json")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args(argv)
    if len(args.requests) != len(args.concurrency):
        ap.error("--requests needs one count per --concurrency level")
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]
    if load > args.max_load_per_core * cores:
        print(
            f"skipped: load average {load:.2f} on {cores} cores is above {args.max_load_per_core} per core; on a "
            "shared machine the figures swing by several times. Run it on a quiet machine (or raise "
            "--max-load-per-core, and say so beside the figures)."
        )
        return 0
    torch.set_num_threads(args.threads)
    gguf_path = smollm2_gguf()

    model, config, tokenizer = load_model(gguf_path, dtype=torch.float32)
    engines: dict[str, AsyncEngine] = {}
    for tier in args.tiers:
        tier_model = model if tier == "fp32" else served_model(gguf_path, tier)[0]
        cfg = EngineConfig(
            tier="bf16" if tier == "fp32" else tier,
            max_model_len=2048,
            max_num_seqs=64,
            max_batch_tokens=args.max_batch_tokens,
            max_prefill_tokens=args.max_prefill_tokens,
            prefix_caching=False,  # every round sends the same prompts; the peers here cache nothing across requests
        )
        engines[f"infleet-{tier}"] = AsyncEngine(LLMEngine(tier_model, config, tokenizer, cfg))
        if tier in args.torch_tiers:  # the bf16/int8/int4 layers pick their kernel when built: PyTorch's, for these
            os.environ[TORCH_ONLY_WEIGHTS[0]] = TORCH_ONLY_WEIGHTS[1]
            try:
                torch_model = model if tier == "fp32" else served_model(gguf_path, tier)[0]
            finally:
                os.environ.pop(TORCH_ONLY_WEIGHTS[0])
            engines[f"infleet-{tier}{TORCH_ONLY}"] = AsyncEngine(LLMEngine(torch_model, config, tokenizer, cfg))
    workloads = {
        c: make_requests(tokenizer, n, args, seed=c) for c, n in zip(args.concurrency, args.requests, strict=True)
    }
    all_prompts = [len(ids) for w in workloads.values() for ids, _ in w]
    bandwidth = read_bandwidth_gbs() * 1e9

    hf_model = None
    if not args.skip_transformers:
        import transformers

        hf_model = transformers.AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        ).eval()
    try:
        llama: LlamaCppBatched | None = LlamaCppBatched(gguf_path, args.threads, args.llama_batch)
        llama_skip = None
    except ImportError:
        llama, llama_skip = None, "llama-cpp-python is not installed (make bench-runtime installs it)"

    results: dict[str, Any] = {
        "setup": {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "model": gguf_path.name,
            "threads": args.threads,
            "cpu_count": cores,
            "load_average": load,
            "repeats": args.repeats,
            "context": args.context,
            "max_batch_tokens": args.max_batch_tokens,
            "max_prefill_tokens": args.max_prefill_tokens,
            "llama_cpp": None
            if llama is None
            else f"llama-cpp-python {llama.lib.__version__}, n_batch {args.llama_batch}",
            "tiers": args.tiers,
            "torch_tiers": args.torch_tiers,
            "mean_prompt_tokens": statistics.mean(all_prompts),
            "min_out": args.min_out,
            "max_out": args.max_out,
            "read_bandwidth_gbs": bandwidth / 1e9,
        },
        "levels": [],
    }
    for c, reqs in workloads.items():
        print(f"== concurrency {c}: {len(reqs)} requests", flush=True)
        runs: list[tuple[str, Callable[[], dict]]] = [
            (name, functools.partial(run_infleet, engine, reqs, c, not name.endswith(TORCH_ONLY)))
            for name, engine in engines.items()
        ]
        if hf_model is not None:
            pad_id = config.eos_token_ids[0]
            runs.append(("transformers", functools.partial(run_transformers, hf_model, reqs, c, pad_id)))
        if llama is not None:
            runs.append((LLAMA, functools.partial(llama.run, reqs, c)))
        per_step: dict[str, float] = {}
        if c == 1:  # bytes one batch-1 decode step reads, for MBU
            mean_ctx = statistics.mean(len(ids) + gen / 2 for ids, gen in reqs)
            per_step = {
                "transformers": decode_bytes(model, torch.float32, mean_ctx),
                # the Q4_1/Q8_0 file as stored is what llama.cpp reads per token
                LLAMA: gguf_path.stat().st_size + kv_bytes_per_token(model, torch.float16) * mean_ctx,
            }
            for name, engine in engines.items():
                kv_dtype = engine.engine.runner.kv_caches[0].k.dtype
                per_step[name] = decode_bytes(engine.engine.model, kv_dtype, mean_ctx)
        samples: dict[str, list[dict]] = {name: [] for name, _ in runs}
        for round_ in range(args.repeats):  # the machine may be shared: take turns, none always first
            shift = (len(results["levels"]) + round_) % len(runs)
            for name, run in runs[shift:] + runs[:shift]:
                r = run()
                if name in per_step:
                    r["bytes_per_step"] = per_step[name]
                    r["mbu"] = per_step[name] * r["decode_steps_per_s"] / bandwidth
                samples[name].append(r)
                print(f"  round {round_ + 1} {name}", r, flush=True)
        level: dict[str, Any] = {"concurrency": c, "requests": len(reqs), "load_average": os.getloadavg()[0]}
        level["runtimes"] = {name: summarise(samples[name]) for name in sorted(samples, key=ORDER.index)}
        if llama is None:
            level["runtimes"][LLAMA] = {"skipped": llama_skip}
        level["ratios"] = {
            f"{name} vs {peer}": ratios(samples[name], samples[peer])
            for name in engines
            for peer in samples
            if not peer.startswith("infleet") or peer == name + TORCH_ONLY
        }
        results["levels"].append(level)
    results["setup"]["load_average_end"] = os.getloadavg()[0]
    results["goals"] = check_goals(results["levels"])
    results["engine_stats"] = {name: vars(engine.stats()) for name, engine in engines.items()}
    for engine in engines.values():
        asyncio.run(engine.shutdown())
    if llama is not None:
        llama.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    write_docs(results, args.docs)
    for g in results["goals"]:
        print(g)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
