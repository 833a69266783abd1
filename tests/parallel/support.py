"""Helpers for the parallel tests: prompts, the single-process reference and parallel generation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

PROMPTS = [
    "The capital of France is",
    "Once upon a time",
    "def fibonacci(n):",
    "The three primary colors are",
    "Water boils at",
    "In 1969, astronauts",
    "A haiku about the sea:",
    "The quick brown fox",
    "To make a cup of tea, first",
    "Kubernetes is",
    "SELECT name FROM users WHERE",
]
MAX_TOKENS = 5


def reference_tokens(model_path: Path, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    """The single-process runtime's greedy tokens."""
    from infleet.runtime.config import EngineConfig
    from infleet.runtime.engine.engine import LLMEngine
    from infleet.runtime.engine.sampler import SamplingParams
    from infleet.runtime.loader import load_model

    torch.set_num_threads(1)
    model, config, tokenizer = load_model(model_path)
    engine = LLMEngine(model, config, tokenizer, EngineConfig(max_model_len=512, max_num_seqs=16))
    return engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True))


def parallel_generate(
    model_path: Path,
    prompts: list[list[int]],
    *,
    tensor: int,
    pipeline: int,
    max_tokens: int,
    micro_batches_per_stage: int = 1,
) -> dict[str, Any]:
    """Greedy generation on `tensor x pipeline` real processes (python -m infleet.runtime.parallel.offline)."""
    spec = {"model": str(model_path), "tensor": tensor, "pipeline": pipeline, "max_tokens": max_tokens}
    spec |= {"prompts": prompts, "micro_batches_per_stage": micro_batches_per_stage}
    done = subprocess.run(
        [sys.executable, "-m", "infleet.runtime.parallel.offline", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result
