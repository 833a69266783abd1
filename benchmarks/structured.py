"""The per-step cost of constrained decoding: the same engine and batch with and without a JSON-schema grammar.

SmolLM2-135M (fp32, one thread), 32 sampled tokens per sequence at batch 1 and 8 after a short chat prompt. Three
arms alternate within each round, so load changes hit all of them: unconstrained; constrained with the masks filled
on the grammar's worker thread while the forward pass runs (what the server does); constrained with the masks filled
in line. The schema asks for a string of at least 400 characters, so every arm runs exactly 32 decode steps. A step's
time is its whole `LLMEngine.step()` (forward, masks, sampling, bookkeeping), as wall time and as the process's CPU
time (which a loaded machine disturbs far less); the prefill step is left out. Prints the median decode-step time
per round (median of rounds, min-max) with the load average and writes them to
benchmarks/results/structured.json (docs/benchmarks.md quotes that file).

    python benchmarks/structured.py [--rounds 5] [--out benchmarks/results]
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
from infleet.runtime.engine.structured import GrammarSpec
from infleet.runtime.loader import load_model
from infleet.runtime.loader.smollm2 import smollm2_gguf

TOKENS = 32
SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string", "maxLength": 40}, "story": {"type": "string", "minLength": 400}},
    "required": ["title", "story"],
    "additionalProperties": False,
}
ARMS = ("unconstrained", "constrained-overlapped", "constrained-inline")


def decode_steps(engine: LLMEngine, prompt: list[int], params: list[SamplingParams]) -> tuple[list[float], list[float]]:
    """Run the batch to the end; the wall time and the process's CPU time (every thread, the grammar's worker
    included) of each step after the first (prefill) one. CPU time barely moves with the machine's load."""
    for i, p in enumerate(params):
        engine.add_request(f"bench-{time.monotonic_ns()}-{i}", prompt, p)
    wall, cpu = [], []
    while engine.has_unfinished():
        start, start_cpu = time.perf_counter(), time.process_time()
        engine.step()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    assert len(wall) == TOKENS, f"{len(wall)} steps, expected {TOKENS}: a sequence ended early"
    return wall[1:], cpu[1:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model, config, tokenizer = load_model(smollm2_gguf(), dtype=torch.float32)
    engine = LLMEngine(model, config, tokenizer, EngineConfig(max_model_len=512, num_kv_blocks=256, max_num_seqs=8))
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Write a short story as JSON."}])
    prompt = tokenizer.encode(text, add_special_tokens=False)
    grammar = engine.grammars.compile(GrammarSpec("json_schema", SCHEMA))

    def params(arm: str, batch: int) -> list[SamplingParams]:
        g = None if arm == "unconstrained" else grammar
        return [
            SamplingParams(max_tokens=TOKENS, temperature=1.0, seed=s, ignore_eos=True, grammar=g) for s in range(batch)
        ]

    step_ms: dict[tuple[str, int], list[float]] = {}
    cpu_ms: dict[tuple[str, int], list[float]] = {}
    load = [os.getloadavg()[0]]
    decode_steps(engine, prompt, params("constrained-overlapped", 2))  # warm-up
    for _ in range(args.rounds):
        for batch in (1, 8):
            for arm in ARMS:
                engine.grammars.overlap = arm != "constrained-inline"
                wall, cpu = decode_steps(engine, prompt, params(arm, batch))
                step_ms.setdefault((arm, batch), []).append(statistics.median(wall) * 1e3)
                cpu_ms.setdefault((arm, batch), []).append(statistics.median(cpu) * 1e3)
        load.append(os.getloadavg()[0])
    rows = []
    for (arm, batch), values in step_ms.items():
        base = statistics.median(step_ms[("unconstrained", batch)])
        median = statistics.median(values)
        cpu = cpu_ms[(arm, batch)]
        cpu_base, cpu_median = statistics.median(cpu_ms[("unconstrained", batch)]), statistics.median(cpu)
        rows.append({
            "arm": arm, "batch": batch, "step_ms_median": round(median, 3), "step_ms_min": round(min(values), 3),
            "step_ms_max": round(max(values), 3), "overhead_vs_unconstrained": round(median / base - 1, 4),
            "rounds": [round(v, 3) for v in values],
            "cpu_ms_median": round(cpu_median, 3), "cpu_ms_min": round(min(cpu), 3), "cpu_ms_max": round(max(cpu), 3),
            "cpu_overhead_vs_unconstrained": round(cpu_median / cpu_base - 1, 4),
        })  # fmt: skip
        print(f"{arm:>23} batch {batch}: wall {median:.2f} ms/step ({min(values):.2f}-{max(values):.2f}), "
              f"{(median / base - 1) * 100:+.1f}%; CPU {cpu_median:.2f} ms/step ({min(cpu):.2f}-{max(cpu):.2f}), "
              f"{(cpu_median / cpu_base - 1) * 100:+.1f}% vs unconstrained")  # fmt: skip
    print(f"load average (1 min) during the run: {min(load):.2f}-{max(load):.2f}")
    result = {
        "benchmark": "structured",
        "model": "SmolLM2-135M-Instruct (fp32, 1 thread)",
        "grammar_engine": "xgrammar",
        "tokens_per_sequence": TOKENS,
        "rounds": args.rounds,
        "schema": SCHEMA,
        "results": rows,
        "load_average_1m": [round(x, 2) for x in load],
        "cpu_count": os.cpu_count(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "structured.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
