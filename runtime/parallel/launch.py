"""Start this pod's ranks and, on the leader, the engine over them.

One process per rank: the pod's main process runs its first rank and starts the others as children
(`python -m infleet.runtime.parallel.worker`). On one machine without the operator's variables, the main
process is the leader and starts every other rank itself (tests, benchmarks, `serve --tensor-parallel 3`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from infleet.runtime.config import DEFAULT_CPU_KV_SHARE, EngineConfig, ModelConfig, memory_limit_bytes
from infleet.runtime.engine.engine import LLMEngine
from infleet.runtime.parallel.channel import Channel, Message
from infleet.runtime.parallel.groups import PodPlacement, RankContext, Topology, placement_from_env
from infleet.runtime.parallel.loading import read_metadata
from infleet.runtime.parallel.pipeline import Stage, stage_layers
from infleet.runtime.parallel.runner import ParallelRunner
from infleet.runtime.parallel.tensor import TensorShard
from infleet.runtime.parallel.watchdog import Watchdog
from infleet.runtime.parallel.worker import RankArgs, load_rank, report_stats, run_worker

if TYPE_CHECKING:
    from infleet.runtime.metrics import RuntimeMetrics
    from infleet.runtime.model.llama import LlamaForCausalLM

log = logging.getLogger("infleet.runtime.parallel")
STOP_WAIT = timedelta(seconds=20)
LEADER_GRACE_SECONDS = 2.0  # /health answers 503 this long before the leader exits


def kv_blocks(
    config: ModelConfig,
    max_num_seqs: int,
    max_model_len: int | None,
    block_size: int,
    budget: int | None = None,
    dtype_bytes: int = 4,
) -> int:
    """CPU ranks: the same number on every rank (each holds its layers' and heads' part of every block), the whole
    replica's cache within `budget` bytes (default: the CPU share of the memory limit). CUDA ranks size their own."""
    from infleet.runtime.engine.memory import num_kv_blocks

    budget = budget if budget is not None else int(memory_limit_bytes() * DEFAULT_CPU_KV_SHARE)
    per_block = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * dtype_bytes * block_size
    max_len = min(max_model_len or config.max_position_embeddings, config.max_position_embeddings)
    return num_kv_blocks(budget, per_block, max_num_seqs, max_len, block_size)


def check_layout(config: ModelConfig, topo: Topology) -> None:
    """A clear error before any process starts."""
    TensorShard.check(config, topo.tensor)
    stage_layers(config.num_hidden_layers, topo.pipeline, 0)


def rank_args(
    cfg: EngineConfig, topo: Topology, placement: PodPlacement, num_kv_blocks: int, dtype: str | None = None
) -> RankArgs:
    """The pod's first rank; `spawn_ranks` derives the others (rank and local GPU number). `cfg` is resolved;
    `dtype` overrides the tier's compute dtype (offline comparisons run float32)."""
    return RankArgs(
        cfg.model, topo.tensor, topo.pipeline, placement.ranks[0], placement.leader_addr, placement.leader_port,
        num_kv_blocks, cfg.block_size, cfg.tier, dtype=dtype or cfg.compute_dtype_name, device=cfg.device,
        kernels=cfg.kernels, gpu_memory_utilization=cfg.gpu_memory_utilization,
    )  # fmt: skip


def spawn_ranks(base: RankArgs, ranks: list[int]) -> list[subprocess.Popen[bytes]]:
    """`base` is the pod's first rank (run by the caller); each other rank gets the next local GPU number."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "infleet.runtime.parallel.worker"]
    return [subprocess.Popen([*cmd, replace(base, rank=r, local_rank=r - base.rank).to_json()], env=env) for r in ranks]


@dataclass
class ParallelGroup:
    """The leader's handle on the replica: its own rank, the other ranks' channel, and local child processes."""

    ctx: RankContext
    stage: Stage
    channel: Channel
    children: list[subprocess.Popen[bytes]]
    cfg: EngineConfig
    watchdog: Watchdog | None = None
    stopped: bool = field(default=False)

    @classmethod
    def start(
        cls,
        cfg: EngineConfig,
        *,
        num_kv_blocks: int,
        placement: PodPlacement | None = None,
        on_failure: Callable[[str], None] | None = None,
        dtype: str | None = None,
    ) -> ParallelGroup:
        """Start `cfg.tensor_parallel` x `cfg.pipeline_parallel` ranks of `cfg.model`; `cfg` (resolved) sets device,
        kernels and dtype (unless `dtype` is given)."""
        topo = Topology(cfg.tensor_parallel, cfg.pipeline_parallel)
        placement = placement or placement_from_env(topo, {}, local_port=_free_port())
        base = rank_args(cfg, topo, placement, num_kv_blocks, dtype)
        children = spawn_ranks(base, placement.ranks[1:])
        try:
            ctx, stage = load_rank(base)
            grace = LEADER_GRACE_SECONDS if on_failure else 0.0
            watchdog = Watchdog(ctx.store_client(), 0, topo.world_size, grace=grace, on_failure=on_failure).start()
            ctx.store.add("loaded", 1)
            deadline = time.monotonic() + 3600
            while ctx.store.add("loaded", 0) < topo.world_size:  # every rank has its weights
                if time.monotonic() > deadline:
                    raise TimeoutError("ranks did not finish loading")
                time.sleep(0.1)
        except BaseException:
            for child in children:
                child.kill()
            raise
        return cls(ctx, stage, Channel(ctx.store), children, cfg, watchdog)

    def engine(self, config: ModelConfig, tokenizer: Any, metrics: RuntimeMetrics | None = None) -> LLMEngine:
        """The leader's engine over every rank: the group's EngineConfig, with the blocks the ranks allocated."""
        runner = ParallelRunner(self.stage, self.channel, self.cfg.micro_batches_per_stage)
        blocks = len(self.stage.kv_caches[0].k) if self.stage.kv_caches else None
        cfg = replace(self.cfg, num_kv_blocks=blocks, block_size=self.stage.block_size)
        model = cast("LlamaForCausalLM", self.stage.model)  # a stage serves the engine through the same interface
        return LLMEngine(model, config, tokenizer, cfg, kv_dtype=self.stage.dtype, metrics=metrics, runner=runner)

    def stats(self) -> list[dict[str, Any]]:
        """Every rank's memory and busy time, plus the leader's step time (for the bubble)."""
        self.channel.publish(Message("stats"))
        report_stats(self.ctx, self.stage)
        out = []
        for rank in range(self.ctx.topo.world_size):
            self.ctx.store.wait([f"stats/{rank}"], STOP_WAIT)
            out.append(json.loads(self.ctx.store.get(f"stats/{rank}")))
            self.ctx.store.delete_key(f"stats/{rank}")
        out[0]["step_time_s"] = self.stage.stats.step_time
        return out

    def stop(self) -> None:
        """Tell every rank to leave, wait for them, and leave the process group."""
        if self.stopped:
            return
        self.stopped = True
        if self.watchdog is not None:
            self.watchdog.stop()
        self.ctx.store.set("shutdown", "1")
        self.channel.publish(Message("stop"))
        deadline = time.monotonic() + STOP_WAIT.total_seconds()
        while self.ctx.store.add("stopped", 0) < self.ctx.topo.world_size - 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        for child in self.children:
            try:
                child.wait(STOP_WAIT.total_seconds())
            except subprocess.TimeoutExpired:
                child.kill()


def _free_port() -> int:
    from infleet.runtime.server.launch import free_port

    return free_port()


class _Health(BaseHTTPRequestHandler):
    """A rank pod is healthy while it runs: a lost peer ends the process (see watchdog.py)."""

    def do_GET(self) -> None:
        ok = self.path == "/health"
        body = b"ok" if ok else b"not found"
        self.send_response(200 if ok else 404)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def serve_rank_pod(cfg: EngineConfig, args: Any, topo: Topology, placement: PodPlacement, num_kv_blocks: int) -> int:
    """A pod without the leader: run its ranks, answer `/health` on the HTTP port (no API, no metrics)."""
    base = rank_args(cfg, topo, placement, num_kv_blocks)
    children = spawn_ranks(base, placement.ranks[1:])
    server = ThreadingHTTPServer((args.host, args.port), _Health)
    threading.Thread(target=server.serve_forever, name="infleet-health", daemon=True).start()
    try:
        return run_worker(base)
    finally:
        server.shutdown()
        for child in children:
            try:
                child.wait(STOP_WAIT.total_seconds())
            except subprocess.TimeoutExpired:
                child.kill()


def serve_parallel(cfg: EngineConfig, args: Any) -> int:
    """`serve --tensor-parallel T --pipeline-parallel P`: this pod's ranks; the leader pod also serves HTTP.
    `cfg` is resolved; `args` holds the HTTP flags."""
    import torch

    from infleet.runtime.__main__ import PROG, listen, log_startup, run_http
    from infleet.runtime.engine.engine import AsyncEngine
    from infleet.runtime.engine.memory import kv_cache_budget
    from infleet.runtime.metrics import RuntimeMetrics
    from infleet.runtime.server.app import Serving

    try:
        topo = Topology(cfg.tensor_parallel, cfg.pipeline_parallel)
        config, tokenizer = read_metadata(Path(cfg.model))
        check_layout(config, topo)
        placement = placement_from_env(topo, local_port=_free_port())
    except (ValueError, OSError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    num_blocks = cfg.num_kv_blocks or 0  # 0: every CUDA rank sizes from its free memory
    if not num_blocks and cfg.device == "cpu":
        budget = kv_cache_budget(cfg, torch.device("cpu"))[0]
        dtype_bytes = getattr(torch, cfg.compute_dtype_name).itemsize
        num_blocks = kv_blocks(config, cfg.max_num_seqs, cfg.max_model_len, cfg.block_size, budget, dtype_bytes)
    if not placement.is_leader_pod:
        return serve_rank_pod(cfg, args, topo, placement, num_blocks)

    try:
        listener = listen(args.host, args.port)  # before the ranks open their own ports
    except ValueError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    served_name = args.served_name or config.name
    metrics = RuntimeMetrics(served_name, cfg.tier)
    holder: dict[str, Serving] = {}

    def unhealthy(reason: str) -> None:
        if "serving" in holder:
            holder["serving"].state.draining = True  # /health: 503 before the process goes

    with listener:  # closed on every way out, a failed start included
        group = ParallelGroup.start(cfg, num_kv_blocks=num_blocks, placement=placement, on_failure=unhealthy)
        engine = AsyncEngine(group.engine(config, tokenizer, metrics))
        log_startup(served_name, engine)
        metrics.set_execution(engine.execution)
        serving = Serving(engine=engine, served_name=served_name, metrics=metrics)
        holder["serving"] = serving
        try:
            return run_http(serving, args, listener)
        finally:
            group.stop()
