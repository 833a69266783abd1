"""The operator's state: one typed object in kopf's memo, made in `__main__` and filled at startup.

kopf hands every handler a shallow copy of the memo, so the client, the dicts and the locks below are shared by
all of them; handlers change what the dicts hold and never assign attributes (that would touch only their copy).
Tests build an `OperatorState` of their own instead of patching module globals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from infleet.autoscaler import policy, tiers
    from infleet.operator.autoscaling import Observer
    from infleet.operator.kube import Kube
    from infleet.operator.observation import FleetReader
    from infleet.operator.status_writer import Entry

Key = tuple[str, str]  # (namespace, InferenceDeployment name)
# Reconciles in flight at once: beyond a few dozen they only queue for HTTP connections and time out together
# (measured with 100 deployments created at once; see benchmarks/operator_scale.py).
MAX_CONCURRENT_RECONCILES = 16

log = logging.getLogger(__name__)


@dataclass
class OperatorState:
    namespaces: list[str] = field(default_factory=list)  # watched namespaces; empty: the whole cluster
    kube: Kube | None = None  # the API client, opened at startup
    observer: Observer | None = None  # where the autoscaler reads a deployment's figures (--prometheus-url)
    reader: FleetReader | None = None  # the observation loop's one query per interval (--prometheus-url)
    replica_device: str | None = None  # whose measured tier profiles describe the replicas (--replica-device)

    # reconciles
    slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(MAX_CONCURRENT_RECONCILES))
    locks: dict[Key, asyncio.Lock] = field(default_factory=dict)
    # (kind, namespace, name) -> the metadata.generation our last apply produced: a newer one is someone else's edit
    applied_generation: dict[tuple[str, str, str], int] = field(default_factory=dict)
    # the one status writer's parts, last write and pending write per deployment (status_writer.py)
    status_entries: dict[Key, Entry] = field(default_factory=dict)
    fleet_products: dict[str, int] = field(default_factory=dict)  # the GPU picture the last recheck acted on
    # the CRDs the operator renders to when they are installed and established (lws.py): LeaderWorkerSet's
    crds: set[str] = field(default_factory=set)
    # groups: pod uid -> container restarts last seen; (namespace, statefulset) -> when its ranks were restarted
    restarts_seen: dict[str, int] = field(default_factory=dict)
    group_restarted_at: dict[Key, float] = field(default_factory=dict)

    # the autoscaler's memory between ticks
    history: dict[Key, tuple[policy.Recommendation, ...]] = field(default_factory=dict)
    tier_states: dict[Key, tiers.TierState] = field(default_factory=dict)
    mixes: dict[Key, tuple[float, float]] = field(default_factory=dict)  # last (prompt, output) tokens per request

    # the observation loop: every deployment as the watch last saw it
    known: dict[Key, dict[str, Any]] = field(default_factory=dict)

    # ModelReady: deployments downloading now (pod, owner, fetch statuses)
    fetching: dict[Key, tuple[str, Mapping[str, Any], list[dict[str, Any]]]] = field(default_factory=dict)

    loops: list[asyncio.Task[None]] = field(default_factory=list)

    def forget(self, key: Key) -> None:
        """A deleted deployment's memories: one created again under the same name starts afresh."""
        self.known.pop(key, None)
        self.history.pop(key, None)
        self.tier_states.pop(key, None)
        self.mixes.pop(key, None)

    @property
    def leaderworkerset(self) -> bool:
        """Multi-node groups render as LeaderWorkerSets (its CRD is installed), else as StatefulSets."""
        from infleet.operator.resources import LWS_CRD

        return LWS_CRD in self.crds

    def client(self) -> Kube:
        assert self.kube is not None, "the startup handler opens the client"
        return self.kube

    def lock(self, key: Key) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())

    def start_loop(self, what: str, interval: float, tick: Callable[[OperatorState], Awaitable[Any]]) -> None:
        """Run `tick` every `interval` seconds until cleanup; one failed tick is logged and the loop goes on."""

        async def loop() -> None:
            while True:
                try:
                    await tick(self)
                except Exception:
                    log.exception(f"{what} tick failed")
                await asyncio.sleep(interval)

        self.loops.append(asyncio.create_task(loop(), name=what))

    async def stop_loops(self) -> None:
        for task in self.loops:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.loops.clear()
