"""The leader's model runner: the engine's drop-in for `ModelRunner` when the model is spread over ranks.

Each step it flattens the scheduled sequences into micro-batches, publishes them to every rank, runs its own stage,
and returns the logits the last stage sent back. With P stages and M micro-batches a step's idle share (the
bubble) is (P-1)/(M+P-1). M = P by default: M = 2P lowers the measured bubble (PP2 0.39 -> 0.30) but each
micro-batch pays its own per-layer overhead, and on SmolLM2 on CPU throughput fell by a quarter to a half
(benchmarks/parallel_cpu.py). More per stage can pay where a micro-batch's fixed cost is small next to its compute.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor

from infleet.runtime.engine.model_runner import ModelRunner
from infleet.runtime.engine.scheduler import ScheduledSequence
from infleet.runtime.parallel.channel import Channel, Message
from infleet.runtime.parallel.pipeline import MicroBatch, Stage

if TYPE_CHECKING:
    from infleet.runtime.model.llama import LlamaForCausalLM


def split_batch(ordered: list[ScheduledSequence], parts: int) -> list[list[ScheduledSequence]]:
    """Contiguous groups of about equal token counts (order kept, so decodes stay first in each group)."""
    parts = max(1, min(parts, len(ordered)))
    total = sum(e.num_tokens for e in ordered)
    groups: list[list[ScheduledSequence]] = [[] for _ in range(parts)]
    done = 0
    for i, entry in enumerate(ordered):
        remaining_entries = len(ordered) - i
        g = min(parts - 1, done * parts // max(total, 1))
        g = max(g, parts - remaining_entries)  # leave one entry for every later group
        g = max(g, max((j for j, grp in enumerate(groups) if grp), default=0))  # never go back
        groups[g].append(entry)
        done += entry.num_tokens
    return [grp for grp in groups if grp]


def micro_batch(entries: list[ScheduledSequence]) -> MicroBatch:
    mb = MicroBatch([], [], [], [], [], [])
    for entry in entries:
        seq, n = entry.seq, entry.num_tokens
        start = seq.num_computed_tokens
        mb.input_ids.extend(seq.token_ids[start : start + n])
        mb.positions.extend(range(start, start + n))
        mb.query_lens.append(n)
        mb.context_lens.append(start + n)
        mb.block_tables.append(list(seq.block_table))
        if entry.samples:
            mb.sample_rows.append(len(mb.input_ids) - 1)
    return mb


class ParallelRunner(ModelRunner):
    computes_prompt_logprobs = False  # the stages hand back the sampled rows' logits only

    def __init__(self, stage: Stage, channel: Channel, micro_batches_per_stage: int = 1) -> None:
        # no super().__init__: the stage owns the cache
        self.stage = stage
        self.channel = channel
        self.model = cast("LlamaForCausalLM", stage.model)  # a stage serves the engine through the same interface
        self.block_size = stage.block_size
        self.kv_caches = stage.kv_caches
        self.device = stage.device
        self.graphs = None  # CUDA graphs: the single-process runner only
        pipeline = stage.ctx.topo.pipeline
        self.micro_batches = pipeline * micro_batches_per_stage if pipeline > 1 else 1  # tensor-only: one batch

    @torch.inference_mode()
    def run(self, batch: list[ScheduledSequence]) -> tuple[list[ScheduledSequence], Tensor]:
        start = time.perf_counter()
        ordered = sorted(batch, key=lambda s: s.num_tokens != 1)  # single-token decodes first (stable)
        groups = split_batch(ordered, self.micro_batches)
        batches = [micro_batch(g) for g in groups]
        self.channel.publish(Message("step", batches))
        logits = self.stage.execute(batches)
        samplers = [e for g in groups for e in g if e.samples]
        stats = self.stage.stats
        stats.step_time += time.perf_counter() - start
        stats.tokens += sum(mb.num_tokens for mb in batches)
        return samplers, torch.cat(logits)
