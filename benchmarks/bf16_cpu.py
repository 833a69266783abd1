"""The bf16 tier on a CPU against float32, side by side: is computing in bf16 on this CPU usable?

SmolLM2-135M (the GGUF's weights dequantized to each dtype), one thread, 32 greedy tokens after a 4-token prompt
at batch 1 and 8; the two engines alternate within each round so load changes hit both. Prints tok/s per round
and the load average (docs/runtime.md quotes the results).

    python benchmarks/bf16_cpu.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from infleet.runtime.config import EngineConfig
from infleet.runtime.engine.engine import LLMEngine
from infleet.runtime.engine.sampler import SamplingParams
from infleet.runtime.loader import load_model
from infleet.runtime.loader.smollm2 import smollm2_gguf


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=2)
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
    for _ in range(args.rounds):
        for name, engine in engines.items():
            for batch in (1, 8):
                engine.generate([prompt] * batch, warm)
                start = time.perf_counter()
                engine.generate([prompt] * batch, params)
                rates.setdefault((name, batch), []).append(batch * 32 / (time.perf_counter() - start))
    print(f"load average {os.getloadavg()[0]:.1f}")
    for (name, batch), values in rates.items():
        print(f"{name} batch {batch}: " + ", ".join(f"{v:.1f}" for v in values) + " tok/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
