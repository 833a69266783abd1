"""Simulated GPU nodes: KWOK-managed `v1.Node` objects with `nvidia.com/gpu` capacity and the labels NVIDIA's
GPU feature discovery sets, built from a fleet file (see `fleet.yaml` beside this module)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

DEFAULT_FLEET = Path(__file__).with_name("fleet.yaml")
KWOK_ANNOTATION = {"kwok.x-k8s.io/node": "fake"}
POOL_LABEL = "infleet.dev/node-pool"


@dataclass(frozen=True)
class NodePool:
    name: str
    count: int
    product: str
    gpus: int
    gpu_memory_mib: int
    cpu: str
    memory: str

    def node(self, index: int) -> dict[str, Any]:
        capacity = {"cpu": self.cpu, "memory": self.memory, "pods": "110", "nvidia.com/gpu": str(self.gpus)}
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": f"{self.name}-{index:04d}",
                "annotations": dict(KWOK_ANNOTATION),
                "labels": {
                    "type": "kwok",
                    POOL_LABEL: self.name,
                    "kubernetes.io/hostname": f"{self.name}-{index:04d}",
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "node.kubernetes.io/instance-type": f"{self.name}-x{self.gpus}",
                    "nvidia.com/gpu.present": "true",
                    "nvidia.com/gpu.product": self.product,
                    "nvidia.com/gpu.count": str(self.gpus),
                    "nvidia.com/gpu.memory": str(self.gpu_memory_mib),
                },
            },
            "spec": {},
            "status": {"capacity": capacity, "allocatable": capacity},
        }


def load_fleet(path: Path = DEFAULT_FLEET, total_nodes: int | None = None) -> list[NodePool]:
    """Read a fleet file; with `total_nodes`, scale every pool's count in proportion (each pool keeps >= 1)."""
    try:
        raw = yaml.safe_load(path.read_text())
        pools = [
            NodePool(
                name=p["name"],
                count=int(p["count"]),
                product=p["product"],
                gpus=int(p["gpus"]),
                gpu_memory_mib=int(p.get("gpuMemoryMiB", 0)),
                cpu=str(p.get("cpu", "64")),
                memory=str(p.get("memory", "512Gi")),
            )
            for p in raw["nodePools"]
        ]
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as err:
        raise SystemExit(f"infleet: bad fleet file {path}: {err!r}") from err
    if total_nodes is None:
        return pools
    if total_nodes < len(pools):
        raise SystemExit(f"infleet: --nodes must be at least {len(pools)} (one per pool in {path})")
    current = sum(p.count for p in pools)
    counts = [max(1, round(p.count * total_nodes / current)) for p in pools]
    counts[0] += total_nodes - sum(counts)  # rounding remainder goes to the first pool
    return [NodePool(**{**p.__dict__, "count": c}) for p, c in zip(pools, counts, strict=True)]


def apply_fleet(api: client.CoreV1Api, pools: list[NodePool], kubelet_port: int | None = None) -> int:
    """Create the pools' nodes (existing ones are kept) and delete KWOK nodes no pool names; returns the count.
    `kubelet_port`: KWOK's server, where the API server reaches a node's "kubelet" (`kubectl logs`); KWOK writes it
    into new nodes, and it is set here on nodes made before KWOK was told it."""
    wanted = {n["metadata"]["name"]: n for p in pools for i in range(p.count) for n in [p.node(i)]}
    listed = api.list_node(label_selector="type=kwok").items
    existing = {n.metadata.name for n in listed}
    stale = [
        n.metadata.name
        for n in listed
        if kubelet_port is not None
        and n.metadata.name in wanted
        and getattr(getattr(n.status.daemon_endpoints, "kubelet_endpoint", None), "port", None) != kubelet_port
    ]

    def point(name: str) -> None:
        body = {"status": {"daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}}}}
        api.patch_node_status(name, body)

    def create(body: dict[str, Any]) -> None:
        try:
            api.create_node(body)
        except ApiException as err:
            if err.status != 409:
                raise

    def delete(name: str) -> None:
        try:
            api.delete_node(name)
        except ApiException as err:
            if err.status != 404:
                raise

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(create, [body for name, body in wanted.items() if name not in existing]))
        list(pool.map(delete, [name for name in existing if name not in wanted]))
        list(pool.map(point, stale))
    return len(wanted)
