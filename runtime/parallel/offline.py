"""Greedy generation over a parallel replica without HTTP: `python -m infleet.runtime.parallel.offline '<json>'`.

Prints one JSON object: each prompt's generated ids, the wall time, and every rank's memory and busy time. The
tests compare these ids with the single-process runtime's; the benchmark reads the numbers.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from infleet.runtime.config import EngineConfig
from infleet.runtime.engine.sampler import SamplingParams
from infleet.runtime.parallel.groups import Topology
from infleet.runtime.parallel.launch import ParallelGroup, check_layout, kv_blocks
from infleet.runtime.parallel.loading import read_metadata


def run(spec: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(1)
    path = Path(spec["model"])
    cfg = EngineConfig(
        model=str(path),
        device="cpu",
        kernels="torch",
        tensor_parallel=int(spec.get("tensor", 1)),
        pipeline_parallel=int(spec.get("pipeline", 1)),
        micro_batches_per_stage=int(spec.get("micro_batches_per_stage", 1)),
        max_model_len=spec.get("max_model_len", 512),
        max_num_seqs=16,
    )
    config, tokenizer = read_metadata(path)
    check_layout(config, Topology(cfg.tensor_parallel, cfg.pipeline_parallel))
    blocks = kv_blocks(config, cfg.max_num_seqs, cfg.max_model_len, cfg.block_size)
    start = time.perf_counter()
    group = ParallelGroup.start(cfg, num_kv_blocks=blocks, dtype="float32")  # as the single-process reference
    load_s = time.perf_counter() - start
    try:
        engine = group.engine(config, tokenizer)
        params = SamplingParams(temperature=0.0, max_tokens=int(spec["max_tokens"]), ignore_eos=True)
        prompts: list[list[int]] = spec["prompts"]
        if spec.get("warmup"):
            engine.generate(prompts[:1], SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True))
        before = group.stage.stats.step_time
        start = time.perf_counter()
        tokens = engine.generate(prompts, params)
        wall = time.perf_counter() - start
        stats = group.stats()
        stats[0]["generate_step_time_s"] = group.stage.stats.step_time - before
        return {"tokens": tokens, "wall_s": wall, "load_s": load_s, "ranks": stats}
    finally:
        group.stop()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    print(json.dumps(run(json.loads(argv[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
