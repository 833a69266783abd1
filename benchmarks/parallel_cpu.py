"""Tensor and pipeline parallelism on this CPU: tokens/s, memory per rank and the pipeline bubble.

Each configuration (one rank, TP3, PP2, PP3) runs SmolLM2 as real processes (`infleet.runtime.parallel.offline`)
on the same greedy workload. Per rank: parameter bytes (its shard), KV-cache bytes, resident and peak resident
memory. The bubble is the share of step time a rank spends not computing, averaged over ranks:
`1 - mean(busy) / step time`; pipeline rows run with the default one micro-batch per stage (M = P) and with
two per stage (`M=2P`), side by side. On two cores every extra rank competes for the same cores, so parallel
configurations are expected to be slower here; the point is that they are correct and what each rank holds.

    python benchmarks/parallel_cpu.py [--prompts 8] [--max-tokens 16] [--out benchmarks/results/parallel_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

# name -> (tensor, pipeline, micro-batches per stage); the `M=2P` rows run two micro-batches per stage next to the
# default one, so that the bubble and the throughput of both schedules are measured under the same load.
CONFIGS = {
    "1": (1, 1, 1),
    "TP3": (3, 1, 1),
    "PP2": (1, 2, 1),
    "PP2 M=2P": (1, 2, 2),
    "PP3": (1, 3, 1),
    "PP3 M=2P": (1, 3, 2),
}
TEXTS = [
    "Once upon a time",
    "The capital of France is",
    "def quicksort(xs):",
    "The theory of relativity says",
    "A recipe for pancakes:",
    "Kubernetes schedules pods by",
    "The best way to learn a language is",
    "In the year 2050,",
]


def run(
    model: Path, tensor: int, pipeline: int, per_stage: int, prompts: list[list[int]], max_tokens: int
) -> dict[str, Any]:
    spec = {"model": str(model), "tensor": tensor, "pipeline": pipeline, "max_tokens": max_tokens}
    spec |= {"micro_batches_per_stage": per_stage}
    spec |= {"prompts": prompts, "warmup": True}
    done = subprocess.run(
        [sys.executable, "-m", "infleet.runtime.parallel.offline", json.dumps(spec)], capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def summarize(name: str, result: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    tokens = sum(len(t) for t in result["tokens"])
    ranks = result["ranks"]
    step_time = ranks[0]["step_time_s"]
    bubble = 1 - sum(r["busy_s"] for r in ranks) / len(ranks) / step_time if step_time else 0.0
    return {
        "config": name,
        "ranks": len(ranks),
        "tokens": tokens,
        "wall_s": round(result["wall_s"], 3),
        "tokens_per_s": round(tokens / result["wall_s"], 2),
        "load_s": round(result["load_s"], 1),
        "bubble_fraction": round(bubble, 3),
        "per_rank": [
            {
                "rank": r["rank"],
                "stage": r["stage"],
                "tensor_rank": r["tensor_rank"],
                "param_mib": round(r["param_bytes"] / 2**20, 1),
                "kv_mib": round(r["kv_bytes"] / 2**20, 1),
                "rss_mib": round(r["VmRSS"] / 2**20, 1),
                "peak_rss_mib": round(r["VmHWM"] / 2**20, 1),
                "busy_s": round(r["busy_s"], 3),
            }
            for r in ranks
        ],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of: {', '.join(CONFIGS)}")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/parallel_cpu.json"))
    args = p.parse_args()

    from infleet.runtime.loader.smollm2 import smollm2_gguf
    from infleet.runtime.parallel.loading import read_metadata

    model = smollm2_gguf()
    tokenizer = read_metadata(model)[1]
    prompts = [tokenizer.encode(TEXTS[i % len(TEXTS)]) for i in range(args.prompts)]
    rows = []
    reference: list[list[int]] | None = None
    for name in args.configs.split(","):
        tensor, pipeline, per_stage = CONFIGS[name]
        result = run(model, tensor, pipeline, per_stage, prompts, args.max_tokens)
        row = summarize(name, result, args.max_tokens)
        row["micro_batches"] = pipeline * per_stage if pipeline > 1 else 1
        reference = reference or result["tokens"]
        row["same_tokens_as_first"] = result["tokens"] == reference
        rows.append(row)
        mem = ", ".join(f"{r['param_mib']:.0f}/{r['rss_mib']:.0f}" for r in row["per_rank"])
        print(
            f"{name:>7}: {row['tokens_per_s']:6.2f} tok/s  bubble {row['bubble_fraction']:.2f} "
            f"(M={row['micro_batches']})  "
            f"params/RSS MiB per rank [{mem}]  same tokens: {row['same_tokens_as_first']}",
            flush=True,
        )
    base = rows[0]["tokens_per_s"]
    for row in rows:
        row["speed_vs_first"] = round(row["tokens_per_s"] / base, 3) if base else None
    workload = {"model": model.name, "prompts": args.prompts, "max_tokens": args.max_tokens, "greedy": True}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"workload": workload, "results": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
