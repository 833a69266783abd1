"""Pipeline parallelism: one rank's stage of the model, and how a step's micro-batches flow through the stages.

Stages own contiguous layer ranges (and the KV cache of those layers only). The leader splits each step's batch
into micro-batches by sequence; stage `s` computes micro-batch `k` as soon as it arrives from stage `s - 1`, sends
it on without waiting for the send to complete, and moves to `k + 1`, so while stage 1 works on micro-batch 0
stage 0 already computes micro-batch 1. The last stage returns each micro-batch's logits to the leader. The idle
share of that schedule, the bubble, is measured per rank: time computing over time in steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn

from infleet.runtime.config import ModelConfig
from infleet.runtime.model.attention import KVCache, StepInputs
from infleet.runtime.model.llama import DecoderLayer, RMSNorm, RotaryEmbedding
from infleet.runtime.parallel.groups import RankContext
from infleet.runtime.parallel.loading import iter_shard
from infleet.runtime.parallel.tensor import TensorShard, VocabParallelEmbedding, VocabParallelLMHead, all_reduce_output

LOGITS_TAG = 1 << 20


def stage_layers(num_layers: int, pipeline: int, stage: int) -> range:
    """Contiguous, as even as possible (earlier stages take the remainder's extra layer)."""
    if num_layers < pipeline:
        raise ValueError(f"--pipeline-parallel {pipeline} exceeds the model's {num_layers} layers")
    base, extra = divmod(num_layers, pipeline)
    start = stage * base + min(stage, extra)
    return range(start, start + base + (1 if stage < extra else 0))


@dataclass
class MicroBatch:
    """What every rank needs to run part of a step: flattened tokens and the paged-attention inputs."""

    input_ids: list[int]
    positions: list[int]
    query_lens: list[int]
    context_lens: list[int]
    block_tables: list[list[int]]
    sample_rows: list[int]

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)


class StageModel(nn.Module):
    """The part of the Llama model one rank holds: its layers' shards, plus the embedding (first stage) and the
    final norm and LM head (last stage). Parameter names follow Hugging Face's, minus the `model.` prefix."""

    def __init__(self, config: ModelConfig, shard: TensorShard, layers: range, first: bool, last: bool) -> None:
        super().__init__()
        local = shard.local_config()
        self.config = local
        self.full_config = config
        self.layer_range = layers
        self.first, self.last = first, last
        self.embed_tokens = VocabParallelEmbedding(shard, config.hidden_size, None) if first else None
        self.layers = nn.ModuleList(DecoderLayer(local) for _ in layers)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps) if last else None
        self.lm_head = VocabParallelLMHead(shard, config.hidden_size, None) if last else None
        self.rope = RotaryEmbedding(config)

    @property
    def num_layers(self) -> int:
        return len(self.layer_range)

    def local_name(self, name: str) -> str | None:
        """Hugging Face name -> this stage's parameter name, or None when the weight lives on another stage."""
        if name.startswith("model.layers."):
            index = int(name.split(".")[2])
            if index not in self.layer_range:
                return None
            return name.replace(f"model.layers.{index}.", f"layers.{index - self.layer_range.start}.", 1)
        if name == "model.embed_tokens.weight":
            return "embed_tokens.weight" if self.first else None
        if name == "model.norm.weight":
            return "norm.weight" if self.last else None
        if name == "lm_head.weight":
            return "lm_head.weight" if self.last else None
        return None


def build_stage(ctx: RankContext, path: str, config: ModelConfig, dtype: torch.dtype) -> StageModel:
    """Allocate this rank's stage and fill it with only its shard of the checkpoint."""
    topo = ctx.topo
    TensorShard.check(config, topo.tensor)
    shard = TensorShard(ctx.tensor_rank, topo.tensor, config)
    layers = stage_layers(config.num_hidden_layers, topo.pipeline, ctx.stage)
    with torch.device("meta"):
        model = StageModel(config, shard, layers, ctx.first_stage, ctx.last_stage)
    model = model.to_empty(device=ctx.device).to(dtype)
    model.rope = RotaryEmbedding(config).to(ctx.device)  # computed buffers are lost by to_empty
    params = dict(model.named_parameters())
    for p in params.values():
        p.data.zero_()  # the padding rows of a vocabulary shard stay zero
    seen: set[str] = set()

    def select(name: str) -> str | tuple[int, range] | None:
        local = model.local_name(name)
        if local is None or local in seen:
            return None
        return shard.rows(name) or "all"

    from pathlib import Path

    for name, tensor in iter_shard(Path(path), config, select):
        local = model.local_name(name)
        assert local is not None
        param = params[local]
        target = param.data[: tensor.shape[0]] if name.endswith(("embed_tokens.weight", "lm_head.weight")) else param
        if target.shape != tensor.shape:
            raise ValueError(f"weight {name!r} shard has shape {tuple(tensor.shape)}, expected {tuple(target.shape)}")
        with torch.no_grad():
            target.copy_(tensor)
        seen.add(local)
    missing = set(params) - seen
    if missing:
        raise ValueError(f"checkpoint lacks {len(missing)} weights for rank {ctx.rank}, e.g. {sorted(missing)[0]!r}")
    if ctx.tensor_group is not None:
        for module in (m for m in (model.embed_tokens, model.lm_head) if m is not None):
            module.group = ctx.tensor_group
        for layer in model.layers:
            assert isinstance(layer, DecoderLayer)
            all_reduce_output(layer.self_attn, ctx.tensor_group)
            all_reduce_output(layer.mlp, ctx.tensor_group)
    return model.eval()


@dataclass
class StageStats:
    busy: float = 0.0  # seconds spent computing (not waiting for activations)
    steps: int = 0
    step_time: float = 0.0  # leader only: wall time from plan to logits
    tokens: int = 0
    timings: list[float] = field(default_factory=list)


class Stage:
    """Runs this rank's part of a step: receive activations, compute its layers, send them on."""

    def __init__(self, ctx: RankContext, model: StageModel, num_blocks: int, block_size: int, kv_dtype: torch.dtype):
        self.ctx = ctx
        self.model = model
        self.block_size = block_size
        c = model.config
        self.device = ctx.device
        self.kv_caches = [
            KVCache.allocate(num_blocks, block_size, c.num_key_value_heads, c.head_dim, kv_dtype, self.device)
            for _ in range(model.num_layers)
        ]
        self.dtype = next(model.parameters()).dtype
        self.stats = StageStats()

    def _peer(self, stage: int) -> int:
        return self.ctx.topo.rank_of(stage, self.ctx.tensor_rank)

    @torch.inference_mode()
    def execute(self, batches: list[MicroBatch]) -> list[Tensor]:
        """Run every micro-batch through this stage; on the leader, returns each one's logits `[samples, vocab]`."""
        ctx, model = self.ctx, self.model
        hidden_size = model.full_config.hidden_size
        sends: list[tuple[dist.Work | None, Tensor]] = []  # a tensor must outlive its send
        logits: list[Tensor] = []
        device = self.device
        for k, mb in enumerate(batches):
            step = StepInputs.build(
                mb.input_ids, mb.query_lens, mb.context_lens, mb.block_tables, self.block_size, mb.sample_rows, device
            )
            if ctx.first_stage:
                assert model.embed_tokens is not None
                start = time.perf_counter()
                x = model.embed_tokens(step.input_ids)
            else:
                x = torch.empty((mb.num_tokens, hidden_size), dtype=self.dtype, device=device)
                dist.recv(x, src=self._peer(ctx.stage - 1), tag=k)
                start = time.perf_counter()
            rope = model.rope(step.positions, x.dtype)
            for layer, cache in zip(model.layers, self.kv_caches, strict=True):
                x = layer(x, rope, cache, step.meta)
            if ctx.last_stage:
                assert model.norm is not None and model.lm_head is not None
                out = model.lm_head(model.norm(x.index_select(0, step.sample_rows)))
                self.stats.busy += time.perf_counter() - start
                if ctx.is_leader:
                    logits.append(out)
                elif ctx.tensor_rank == 0 and mb.sample_rows:
                    buf = out.contiguous()
                    sends.append((dist.isend(buf, dst=0, tag=LOGITS_TAG + k), buf))
            else:
                self.stats.busy += time.perf_counter() - start
                buf = x.contiguous()
                sends.append((dist.isend(buf, dst=self._peer(ctx.stage + 1), tag=k), buf))
        if ctx.is_leader and not ctx.last_stage:
            vocab = model.full_config.vocab_size
            last = self.ctx.topo.rank_of(self.ctx.topo.pipeline - 1, 0)
            for k, mb in enumerate(batches):
                if not mb.sample_rows:
                    logits.append(torch.empty((0, vocab), dtype=torch.float32, device=device))
                    continue
                out = torch.empty((len(mb.sample_rows), vocab), dtype=torch.float32, device=device)
                dist.recv(out, src=last, tag=LOGITS_TAG + k)
                logits.append(out)
        for work, _ in sends:
            if work is not None:
                work.wait()
        self.stats.steps += 1
        return logits
