"""Multi-LoRA on the CPU, side by side: what adapters cost, and what one mixed batch buys over one adapter at a time.

SmolLM2-135M (the GGUF), two random rank-16 adapters on all seven projections of every layer (written as PEFT files),
greedy, end-of-sequence ignored so every arm produces the same number of tokens. Arms, all with the same requests:

- off: the model without LoRA; 8 base requests in one batch.
- on, base rows: the same model (a second copy) with LoRA on and both adapters loaded; the same 8 base requests.
- on, mixed: 4 requests through adapter 1 and 4 through adapter 2 in one batch.
- one adapter at a time: the same 8 adapter requests, adapter 1's batch of 4 and then adapter 2's (how separate
  per-adapter serving would run them on one replica).

Tokens/s counts every generated token over the arm's wall time. Every round runs every arm, alternating the order,
so load changes on the shared machine hit them all; the report gives medians with min-max and the load average.
Goal checks from the medians (each can print "not met"): base rows with LoRA on within 5% of LoRA off; the mixed
batch faster than one adapter at a time. Writes `benchmarks/results/lora.json`.

    python benchmarks/lora.py [--rounds 3] [--tier int8] [--threads 1] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from infleet.runtime.config import EngineConfig
from infleet.runtime.engine.engine import LLMEngine, apply_tier
from infleet.runtime.engine.sampler import SamplingParams
from infleet.runtime.loader import load_model
from infleet.runtime.loader.smollm2 import smollm2_gguf
from infleet.runtime.lora.adapter import TARGET_MODULES
from infleet.runtime.lora.manager import LoRAManager

ROOT = Path(__file__).resolve().parent.parent
RANK = 16
PROMPTS = [
    "Write a short poem about the sea.",
    "Explain how a bicycle stays upright.",
    "List three uses of a paperclip.",
    "What is the capital of France?",
    "Describe a rainy afternoon in a city.",
    "How do bees make honey?",
    "Give me a recipe for pancakes.",
    "Why is the sky blue?",
]


def write_adapter(path: Path, model: Any, seed: int) -> Path:
    """A PEFT adapter of rank RANK on every projection, random A and B."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for i, layer in enumerate(model.model.layers):
        for parent, kind in ((layer.self_attn, "self_attn"), (layer.mlp, "mlp")):
            for name in TARGET_MODULES:
                linear = getattr(parent, name, None)
                if linear is None:
                    continue
                k, n = linear.in_features, linear.out_features
                key = f"base_model.model.model.layers.{i}.{kind}.{name}"
                tensors[f"{key}.lora_A.weight"] = torch.randn(RANK, k, generator=gen) / k**0.5
                tensors[f"{key}.lora_B.weight"] = torch.randn(n, RANK, generator=gen) * 0.01
    path.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": RANK, "lora_alpha": 2 * RANK, "target_modules": list(TARGET_MODULES)}
    (path / "adapter_config.json").write_text(json.dumps(config))
    save_file(tensors, str(path / "adapter_model.safetensors"))
    return path


def run(engine: LLMEngine, prompts: list[list[int]], adapters: list[str | None], max_tokens: int) -> tuple[int, float]:
    """(tokens generated, seconds) for one batch."""
    params = [SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, adapter=a) for a in adapters]
    start = time.perf_counter()
    out = engine.generate(prompts, params)
    return sum(len(o) for o in out), time.perf_counter() - start


def summary(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tier", default="int8")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "lora.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.tier == "bf16" else torch.float32  # as the runtime computes each tier on a CPU
    plain, config, tokenizer = load_model(smollm2_gguf(), dtype=dtype)
    plain = apply_tier(plain, args.tier)
    wrapped, _, _ = load_model(smollm2_gguf(), dtype=dtype)
    wrapped = apply_tier(wrapped, args.tier)
    lora = LoRAManager(wrapped, max_loras=2, max_rank=RANK)
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(("a1", "a2")):
            lora.load(name, str(write_adapter(Path(tmp) / name, plain, seed=i)))
    common: dict[str, Any] = dict(max_model_len=1024, max_num_seqs=8, num_kv_blocks=256, tier=args.tier)
    off = LLMEngine(plain, config, tokenizer, EngineConfig(**common))
    on = LLMEngine(wrapped, config, tokenizer, EngineConfig(**common), lora=lora)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}]) for p in PROMPTS]
    ids = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    mixed = ["a1"] * 4 + ["a2"] * 4
    arms: dict[str, Any] = {
        "off": lambda: run(off, ids, [None] * 8, args.max_tokens),
        "on_base_rows": lambda: run(on, ids, [None] * 8, args.max_tokens),
        "on_mixed": lambda: run(on, ids, list(mixed), args.max_tokens),
        "one_adapter_at_a_time": lambda: tuple(
            map(sum, zip(*(run(on, ids[i : i + 4], mixed[i : i + 4], args.max_tokens) for i in (0, 4)), strict=True))
        ),
    }
    for arm in arms.values():  # warm-up: first-call allocations
        arm()
    rates: dict[str, list[float]] = {name: [] for name in arms}
    load = [os.getloadavg()[0]]
    for r in range(args.rounds):
        order = list(arms) if r % 2 == 0 else list(arms)[::-1]
        for name in order:
            tokens, seconds = arms[name]()
            rates[name].append(tokens / seconds)
            load.append(os.getloadavg()[0])
        print(f"round {r + 1}: " + ", ".join(f"{n} {rates[n][-1]:.1f} tok/s" for n in arms), flush=True)
    med = {n: statistics.median(v) for n, v in rates.items()}
    goals = {
        "base_rows_within_5pct_of_off": med["on_base_rows"] / med["off"] >= 0.95,
        "mixed_batch_faster_than_one_adapter_at_a_time": med["on_mixed"] > med["one_adapter_at_a_time"],
    }
    result = {
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF)",
        "tier": args.tier,
        "threads": args.threads,
        "requests": 8,
        "max_tokens": args.max_tokens,
        "adapters": {"count": 2, "rank": RANK, "modules": list(TARGET_MODULES)},
        "rounds": args.rounds,
        "tok_s": {n: summary(v) for n, v in rates.items()},
        "ratios_of_medians": {
            "on_base_rows/off": med["on_base_rows"] / med["off"],
            "on_mixed/off": med["on_mixed"] / med["off"],
            "on_mixed/one_adapter_at_a_time": med["on_mixed"] / med["one_adapter_at_a_time"],
        },
        "goals": goals,
        "load_average_1m": summary(load),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for goal, met in goals.items():
        print(f"{goal}: {'met' if met else 'NOT MET'}")
    print(json.dumps(result["ratios_of_medians"], indent=2))


if __name__ == "__main__":
    main()
