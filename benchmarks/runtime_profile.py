"""Where a CPU decode step's time goes: torch.profiler over the engine's steps, the top ops by self time.

Loads SmolLM2-135M-Instruct (the GGUF) at each `--tiers` tier, starts `batch` sequences of `--prompt-tokens` tokens,
runs their prefill, then profiles `--steps` whole `LLMEngine.step()` calls of pure decode. Reports per step: the wall
time, the time inside aten ops (self CPU, summed) and the rest (Python and dispatch between ops), and the ten ops
with the most self time, with their calls per step. Writes JSON (`benchmarks/results/runtime_profile.json`) that
`docs/performance.md` quotes.

    python benchmarks/runtime_profile.py [--tiers bf16 int8 int4] [--batches 1 32] [--threads 1] [--label after]
        [--attention kernel|gather] [--logits kernel|torch]   # infleet's C kernels for the CPU, or PyTorch's paths
    python benchmarks/runtime_profile.py --render before.json after.json   # markdown tables, side by side
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from infleet.runtime.config import EngineConfig
from infleet.runtime.engine.engine import LLMEngine
from infleet.runtime.engine.sampler import SamplingParams
from infleet.runtime.loader.smollm2 import smollm2_gguf
from infleet.runtime.quant.profile import served_model

ROOT = Path(__file__).resolve().parent.parent


def decoding_engine(model: Any, config: Any, tokenizer: Any, tier: str, batch: int, prompt: int) -> LLMEngine:
    """An engine whose `batch` sequences are past their prefill: every next step is a pure decode step."""
    cfg = EngineConfig(tier=tier, max_model_len=2048, max_num_seqs=max(batch, 1), max_batch_tokens=4096)
    engine = LLMEngine(model, config, tokenizer, cfg)
    params = SamplingParams(max_tokens=1024, temperature=0.0, ignore_eos=True)
    ids = tokenizer.encode("the function returns the value of the cache " * 64)[:prompt]
    for i in range(batch):
        engine.add_request(f"p{i}", ids, params)
    while engine.num_waiting or any(s.num_computed_tokens < s.prompt_len for s in engine.scheduler.running):
        engine.step()
    engine.step()  # the first decode step, out of the measurement
    return engine


def profile_steps(engine: LLMEngine, steps: int) -> dict[str, Any]:
    walls = []
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            t = time.perf_counter()
            engine.step()
            walls.append(time.perf_counter() - t)
    events = prof.key_averages()
    # self times of every op: what the step spends inside aten kernels (nested ops are not counted twice)
    op_us = sum(e.self_cpu_time_total for e in events) / steps
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:10]
    wall_ms = statistics.median(walls) * 1e3
    return {
        "step_ms": wall_ms,
        "step_ms_min_max": [min(walls) * 1e3, max(walls) * 1e3],
        "step_ms_mean": statistics.mean(walls) * 1e3,  # what the op totals below compare with
        "ops_ms": op_us / 1e3,  # under the profiler: its overhead inflates the small ops a little
        "top_ops": [
            {"op": e.key, "ms_per_step": e.self_cpu_time_total / steps / 1e3, "calls_per_step": e.count / steps}
            for e in top
        ],
        "calls_per_step": sum(e.count for e in events) / steps,
    }


def render(paths: list[Path]) -> str:
    """Markdown: per tier and batch, each run's step time and its top ops, the runs side by side."""
    runs = [json.loads(p.read_text()) for p in paths]
    lines = []
    for key in [(r["tier"], r["batch"]) for r in runs[0]["runs"]]:
        cells = [next(r for r in run["runs"] if (r["tier"], r["batch"]) == key) for run in runs]
        lines.append(f"**{key[0]}, batch {key[1]}**")
        for run, c in zip(runs, cells, strict=True):
            lines += [
                "",
                f"{run['label'] or run['commit']} ({run['commit']}): step {c['step_ms']:.1f} ms median "
                f"({c['step_ms_min_max'][0]:.1f}-{c['step_ms_min_max'][1]:.1f}), mean {c['step_ms_mean']:.1f} ms, "
                f"{c['ops_ms']:.1f} ms inside ops (self time), "
                f"{c['calls_per_step']:.0f} op calls",
                "",
                "| op | ms / step | calls / step |",
                "|---|---:|---:|",
                *(f"| `{o['op']}` | {o['ms_per_step']:.2f} | {o['calls_per_step']:.0f} |" for o in c["top_ops"]),
            ]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiers", nargs="+", default=["bf16", "int8", "int4"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--label", default="", help="a name for this run in the JSON (e.g. before / after)")
    ap.add_argument("--attention", choices=["kernel", "gather"], default="kernel", help="CPU decode attention path")
    ap.add_argument("--logits", choices=["kernel", "torch"], default="kernel", help="CPU int8 logits path")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "runtime_profile.json")
    ap.add_argument("--render", type=Path, nargs="+", help="print these runs' tables as markdown and exit")
    args = ap.parse_args(argv)
    if args.render:
        print(render(args.render))
        return 0
    torch.set_num_threads(args.threads)
    os.environ["INFLEET_CPU_ATTENTION"] = args.attention  # read at each call (runtime/kernels/cpu_attention.py)
    os.environ["INFLEET_CPU_LOGITS"] = args.logits  # (runtime/kernels/cpu_logits.py)
    gguf = smollm2_gguf()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    result: dict[str, Any] = {
        "label": args.label,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": commit.stdout.strip(),
        "model": gguf.name,
        "threads": args.threads,
        "attention": args.attention,
        "logits": args.logits,
        "prompt_tokens": args.prompt_tokens,
        "steps": args.steps,
        "load_average_start": os.getloadavg()[0],
        "torch": torch.__version__,
        "runs": [],
    }
    for tier in args.tiers:
        model, config, tokenizer = served_model(gguf, tier)
        for batch in args.batches:
            engine = decoding_engine(model, config, tokenizer, tier, batch, args.prompt_tokens)
            run = {"tier": tier, "batch": batch, **profile_steps(engine, args.steps)}
            result["runs"].append(run)
            print(f"{tier} batch {batch}: step {run['step_ms']:.1f} ms, ops {run['ops_ms']:.1f} ms", flush=True)
            for op in run["top_ops"]:
                print(f"  {op['op']:40s} {op['ms_per_step']:8.2f} ms {op['calls_per_step']:6.0f} calls", flush=True)
    result["load_average_end"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
