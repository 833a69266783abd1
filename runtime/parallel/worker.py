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
from infleet.runtime.parallel.pipeline import Stage, build_stage
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
    num_kv_blocks: int
    block_size: int = 16
    tier: str = "bf16"
    dtype: str = "float32"

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

    from infleet.runtime.parallel.loading import read_metadata
    from infleet.runtime.quant.tiers import apply_tier

    torch.set_num_threads(int(__import__("os").environ.get("INFLEET_RANK_THREADS", "1")))
    topo = Topology(args.tensor, args.pipeline)
    ctx = init_rank(topo, args.rank, args.leader_addr, args.leader_port)
    config, _ = read_metadata(Path(args.model))
    dtype = getattr(torch, args.dtype)
    model = apply_tier(build_stage(ctx, args.model, config, dtype), args.tier)
    return ctx, Stage(ctx, model, args.num_kv_blocks, args.block_size, dtype)


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
