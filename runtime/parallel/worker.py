"""Every rank but the leader: load its shard, then run the steps the leader publishes until told to stop.

`python -m infleet.runtime.parallel.worker '<json>'` runs one rank (the pod's main process starts its other ranks
this way). The JSON holds `RankArgs`.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass

import torch

from infleet.runtime.parallel.channel import Channel
from infleet.runtime.parallel.groups import RankContext, Topology, init_rank
from infleet.runtime.parallel.pipeline import Stage, StageModel, build_stage
from infleet.runtime.parallel.watchdog import Watchdog

log = logging.getLogger("infleet.runtime.parallel")


@dataclass
class RankArgs:
    model: str
    tensor: int
    pipeline: int
    rank: int
    leader_addr: str
    leader_port: int
    num_kv_blocks: int  # 0: size from this GPU's free memory (the smallest over all ranks)
    block_size: int = 16
    tier: str = "bf16"
    dtype: str = "float32"
    device: str = "cpu"  # "cpu" or "cuda"; a CUDA rank uses the pod's GPU number `local_rank`
    kernels: str = "torch"
    local_rank: int = 0
    gpu_memory_utilization: float = 0.9

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def rank_memory() -> dict[str, int]:
    """Resident and peak resident bytes of this process (Linux)."""
    out: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def report_stats(ctx: RankContext, stage: Stage) -> None:
    param_bytes = sum(p.numel() * p.element_size() for p in stage.model.parameters())
    kv_bytes = sum(c.k.numel() * c.k.element_size() * 2 for c in stage.kv_caches)
    s = stage.stats
    record = {"rank": ctx.rank, "stage": ctx.stage, "tensor_rank": ctx.tensor_rank, "busy_s": s.busy}
    record |= {"steps": s.steps, "param_bytes": param_bytes, "kv_bytes": kv_bytes, **rank_memory()}
    ctx.store.set(f"stats/{ctx.rank}", json.dumps(record))


def load_rank(args: RankArgs) -> tuple[RankContext, Stage]:
    from pathlib import Path

    from infleet.runtime.kernels import dispatch
    from infleet.runtime.model.llama import fuse_projections
    from infleet.runtime.parallel.loading import read_metadata
    from infleet.runtime.quant.tiers import apply_tier

    torch.set_num_threads(int(__import__("os").environ.get("INFLEET_RANK_THREADS", "1")))
    dispatch.set_backend(args.kernels)
    device = torch.device(args.device)
    if device.type == "cuda":  # within CUDA_VISIBLE_DEVICES, i.e. the GPUs the pod was given
        device = torch.device("cuda", args.local_rank)
        torch.cuda.set_device(device)
    topo = Topology(args.tensor, args.pipeline)
    ctx = init_rank(topo, args.rank, args.leader_addr, args.leader_port, device)
    config, _ = read_metadata(Path(args.model))
    dtype = getattr(torch, args.dtype)
    model = apply_tier(fuse_projections(build_stage(ctx, args.model, config, dtype)), args.tier)
    num_blocks = args.num_kv_blocks or gpu_kv_blocks(ctx, model, dtype, args)
    return ctx, Stage(ctx, model, num_blocks, args.block_size, dtype)


def gpu_kv_blocks(ctx: RankContext, model: StageModel, dtype: torch.dtype, args: RankArgs) -> int:
    """Blocks this GPU's free memory holds after its weights, agreed on as the minimum over every rank."""
    import torch.distributed as dist

    from infleet.runtime.config import EngineConfig
    from infleet.runtime.engine.memory import kv_cache_budget

    cfg = EngineConfig(device="cuda", gpu_memory_utilization=args.gpu_memory_utilization)
    budget, how = kv_cache_budget(cfg, ctx.device)
    c = model.config
    per_block = 2 * len(model.layers) * c.num_key_value_heads * c.head_dim * dtype.itemsize * args.block_size
    blocks = torch.tensor([max(1, budget // per_block)], device=ctx.device)
    dist.all_reduce(blocks, op=dist.ReduceOp.MIN)
    log.info("rank %d: %s; KV cache %d blocks (smallest over the ranks)", ctx.rank, how, int(blocks))
    return int(blocks)


def run_worker(args: RankArgs) -> int:
    """Returns 0 after a clean stop; a lost peer ends the process from the watchdog with status 1."""
    ctx, stage = load_rank(args)
    watchdog = Watchdog(ctx.store_client(), ctx.rank, ctx.topo.world_size).start()
    channel = Channel(ctx.store)
    ctx.store.add("loaded", 1)
    while True:
        message = channel.receive()
        if message.kind == "step":
            stage.execute(message.batches)
        elif message.kind == "stats":
            report_stats(ctx, stage)
        elif message.kind == "stop":
            watchdog.stop()
            ctx.store.add("stopped", 1)
            return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s rank: %(message)s")
    args = RankArgs(**json.loads(argv[0]))
    try:
        return run_worker(args)
    except Exception:
        log.exception("rank %d failed", args.rank)
        return 1


if __name__ == "__main__":
    sys.exit(main())
