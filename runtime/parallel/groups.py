"""Who is who in a parallel replica: ranks, pipeline stages, tensor groups, and where the leader is.

Global rank `g` of a `tensor x pipeline` replica is tensor rank `g % tensor` of pipeline stage `g // tensor`, so
consecutive ranks form a tensor group. Pods take consecutive ranks (`ranks_per_pod` each): the tensor ranks of a
stage share a pod and stages span pods; when a stage needs more devices than a pod has, its tensor group spans
pods too. Rank 0 is the leader: it hosts the rendezvous store, runs the scheduler and serves HTTP.

A pod learns its place from the environment the operator renders on grouped pods (INFLEET_RANK is the pod's
ordinal in its group, INFLEET_WORLD_SIZE the number of pods, INFLEET_GPUS_PER_POD the ranks each pod runs,
INFLEET_LEADER_ADDR/INFLEET_LEADER_PORT the leader pod's rendezvous address). Without INFLEET_RANK one machine runs
the whole replica.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

DEFAULT_PORT = 29500
COLLECTIVE_TIMEOUT = timedelta(seconds=float(os.environ.get("INFLEET_COLLECTIVE_TIMEOUT", "300")))


@dataclass(frozen=True)
class Topology:
    tensor: int
    pipeline: int

    def __post_init__(self) -> None:
        if self.tensor < 1 or self.pipeline < 1:
            raise ValueError("--tensor-parallel and --pipeline-parallel must be at least 1")

    @property
    def world_size(self) -> int:
        return self.tensor * self.pipeline

    def stage(self, rank: int) -> int:
        return rank // self.tensor

    def tensor_rank(self, rank: int) -> int:
        return rank % self.tensor

    def rank_of(self, stage: int, tensor_rank: int) -> int:
        return stage * self.tensor + tensor_rank

    def tensor_group_ranks(self, stage: int) -> list[int]:
        return [self.rank_of(stage, t) for t in range(self.tensor)]


@dataclass(frozen=True)
class PodPlacement:
    """This pod's share of the replica: the global ranks it runs, and the leader's rendezvous address."""

    pod_rank: int
    num_pods: int
    ranks: list[int]
    leader_addr: str  # an IP address: resolved in Python (see resolve)
    leader_port: int

    @property
    def is_leader_pod(self) -> bool:
        return self.pod_rank == 0


def resolve(host: str) -> str:
    """Resolve in Python: pod DNS names may be known only to Python-level resolvers, which C++ cannot see."""
    try:
        return socket.gethostbyname(host)
    except OSError as exc:
        raise ValueError(f"cannot resolve the leader address {host!r}: {exc}") from exc


def placement_from_env(
    topo: Topology, env: dict[str, str] | None = None, local_port: int | None = None
) -> PodPlacement:
    """The pod's ranks from the operator's variables; without them, this machine runs every rank."""
    env = dict(os.environ if env is None else env)
    if "INFLEET_RANK" not in env:
        return PodPlacement(0, 1, list(range(topo.world_size)), "127.0.0.1", local_port or DEFAULT_PORT)
    try:
        pod_rank = int(env["INFLEET_RANK"])
        num_pods = int(env.get("INFLEET_WORLD_SIZE", "1"))
        per_pod = int(env.get("INFLEET_GPUS_PER_POD") or -(-topo.world_size // num_pods))
        port = int(env.get("INFLEET_LEADER_PORT", str(DEFAULT_PORT)))
    except ValueError as exc:
        raise ValueError(f"bad group environment: {exc}") from exc
    if not 0 <= pod_rank < num_pods:
        raise ValueError(f"INFLEET_RANK={pod_rank} is outside a group of INFLEET_WORLD_SIZE={num_pods} pods")
    if per_pod < 1 or num_pods * per_pod < topo.world_size:
        raise ValueError(
            f"{num_pods} pods x {per_pod} ranks cannot hold tensor {topo.tensor} x pipeline {topo.pipeline} "
            f"= {topo.world_size} ranks"
        )
    ranks = list(range(pod_rank * per_pod, min((pod_rank + 1) * per_pod, topo.world_size)))
    if not ranks:
        raise ValueError(f"pod {pod_rank} has no rank to run ({topo.world_size} ranks over {num_pods} pods)")
    leader = env.get("INFLEET_LEADER_ADDR") or "127.0.0.1"
    return PodPlacement(pod_rank, num_pods, ranks, resolve(leader), port)


@dataclass
class RankContext:
    """One process's view: its rank, stage and tensor group, and the store shared by the replica."""

    topo: Topology
    rank: int
    store: dist.TCPStore
    tensor_group: dist.ProcessGroup | None  # None when tensor == 1
    leader_addr: str
    leader_port: int
    device: torch.device

    @property
    def stage(self) -> int:
        return self.topo.stage(self.rank)

    @property
    def tensor_rank(self) -> int:
        return self.topo.tensor_rank(self.rank)

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    @property
    def first_stage(self) -> bool:
        return self.stage == 0

    @property
    def last_stage(self) -> bool:
        return self.stage == self.topo.pipeline - 1

    def store_client(self) -> dist.TCPStore:
        """A separate connection (a thread of its own should not share one)."""
        return dist.TCPStore(self.leader_addr, self.leader_port, is_master=False, timeout=COLLECTIVE_TIMEOUT)


def init_rank(
    topo: Topology, rank: int, leader_addr: str, leader_port: int, device: torch.device | None = None
) -> RankContext:
    """Join the replica's process group (gloo for a CPU model, NCCL for a GPU one) and build the tensor groups.

    A CUDA rank must have pinned its GPU (torch.cuda.set_device) first: NCCL binds the communicator to it."""
    device = device or torch.device("cpu")
    backend = "nccl" if device.type == "cuda" else "gloo"
    store = dist.TCPStore(
        leader_addr,
        leader_port,
        topo.world_size,
        is_master=rank == 0,
        timeout=COLLECTIVE_TIMEOUT,
        wait_for_workers=False,
    )
    dist.init_process_group(
        backend,
        store=store,
        rank=rank,
        world_size=topo.world_size,
        timeout=COLLECTIVE_TIMEOUT,
        device_id=device if device.type == "cuda" else None,
    )
    group = None
    for stage in range(topo.pipeline):  # every rank creates every group, in the same order
        ranks = topo.tensor_group_ranks(stage)
        g = dist.new_group(ranks) if topo.tensor > 1 else None
        if rank in ranks and isinstance(g, dist.ProcessGroup):
            group = g
    return RankContext(topo, rank, store, group, leader_addr, leader_port, device)
