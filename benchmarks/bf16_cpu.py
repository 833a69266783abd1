"""The bf16 tier on a CPU against float32, side by side: is computing in bf16 on this CPU usable?

SmolLM2-135M (the GGUF's weights dequantized to each dtype), one thread, 32 greedy tokens after a 4-token prompt
at batch 1 and 8; the two engines alternate within each round so load changes hit both. Prints tok/s per round
(median, min-max) with the load average and writes them to benchmarks/results/bf16_cpu.json (docs/runtime.md
quotes that file).

    python benchmarks/bf16_cpu.py [--rounds 3] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from infleet.runtime.config import EngineConfig
from infleet.runtime.engine.engine import LLMEngine
from infleet.runtime.engine.sampler import SamplingParams
from infleet.runtime.loader import load_model
from infleet.runtime.loader.smollm2 import smollm2_gguf


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    engines = {}
    for dtype in (torch.float32, torch.bfloat16):
        model, config, tokenizer = load_model(smollm2_gguf(), dtype=dtype)
        cfg = EngineConfig(max_model_len=512, num_kv_blocks=256, max_num_seqs=8)
        engines[str(dtype)] = LLMEngine(model, config, tokenizer, cfg)
    prompt = next(iter(engines.values())).tokenizer.encode("Once upon a time")
    warm = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)
    params = SamplingParams(max_tokens=32, temperature=0.0, ignore_eos=True)
    rates: dict[tuple[str, int], list[float]] = {}
    load = [os.getloadavg()[0]]
    for _ in range(args.rounds):
        for name, engine in engines.items():
            for batch in (1, 8):
                engine.generate([prompt] * batch, warm)
                start = time.perf_counter()
                engine.generate([prompt] * batch, params)
                rates.setdefault((name, batch), []).append(batch * 32 / (time.perf_counter() - start))
        load.append(os.getloadavg()[0])
    rows = []
    for (name, batch), values in rates.items():
        dtype = name.removeprefix("torch.")
        median, low, high = statistics.median(values), min(values), max(values)
        rows.append({"dtype": dtype, "batch": batch, "tok_s_median": round(median, 2), "tok_s_min": round(low, 2),
                     "tok_s_max": round(high, 2), "rounds": [round(v, 2) for v in values]})  # fmt: skip
        print(f"{dtype:>8} batch {batch}: {median:.1f} tok/s ({low:.1f}-{high:.1f})")
    ratios = {}
    for b in (1, 8):
        bf16, fp32 = statistics.median(rates[("torch.bfloat16", b)]), statistics.median(rates[("torch.float32", b)])
        ratios[f"batch_{b}"] = round(bf16 / fp32, 3)
    print(f"bf16/float32 (medians): {ratios}; load average {min(load):.1f}-{max(load):.1f}")
    result = {
        "benchmark": "bf16_cpu", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "threads": 1,
        "prompt_tokens": len(prompt), "new_tokens": 32, "rows": rows, "bf16_over_float32": ratios,
        "load_average": {"min": min(load), "max": max(load), "samples": load},
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bf16_cpu.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
