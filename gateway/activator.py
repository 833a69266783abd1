"""Scale from zero: hold a request until its deployment has a ready replica, and ask for one.

A deployment with no ready endpoint (scaled to zero, or its only replica restarting) does not answer 404 or 503
straight away: the request waits in a bounded queue per deployment, the gateway records demand (the
`infleet.dev/scale-from-zero-requested` annotation on the InferenceDeployment, which the operator turns into at
least one replica, and the `infleet_gateway_held_requests` gauge), and every waiter is released the moment
discovery sees a ready endpoint. Past the queue bound or the hold timeout the answer is 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

from infleet.gateway.catalog import Catalog, Deployment, Endpoint, Key
from infleet.gateway.metrics import GatewayMetrics

log = logging.getLogger("infleet.gateway.activator")

SCALE_FROM_ZERO_ANNOTATION = "infleet.dev/scale-from-zero-requested"

DemandRecorder = Callable[[Deployment], Awaitable[None]]


class ModelStarting(Exception):
    """503 + Retry-After: the model has no ready replica yet and this request cannot wait (longer)."""

    def __init__(self, deployment: Deployment, reason: str, retry_after: int) -> None:
        self.deployment = deployment
        self.retry_after = retry_after
        self.reason = reason  # "queue_full" or "hold_timeout"
        detail = "too many requests are already waiting for it" if reason == "queue_full" else "it is not ready yet"
        self.message = (
            f"model {deployment.served_name!r} is starting (scaling from zero); {detail}; retry in {retry_after}s"
        )
        super().__init__(self.message)


@dataclass
class HoldPolicy:
    max_held: int = 64  # waiters per deployment
    timeout: float = 300.0  # seconds a request may wait (a cold start pulls and loads a model)
    retry_after: int = 10  # seconds, told to clients turned away
    demand_interval: float = 15.0  # seconds between two demand records for one deployment


class Activator:
    def __init__(
        self,
        catalog: Catalog,
        metrics: GatewayMetrics,
        policy: HoldPolicy | None = None,
        record_demand: DemandRecorder | None = None,
    ) -> None:
        self.catalog = catalog
        self.metrics = metrics
        self.policy = policy or HoldPolicy()
        self.record_demand = record_demand
        self.held: dict[Key, int] = {}
        self._changed: dict[Key, asyncio.Event] = {}
        self._last_demand: dict[Key, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wake waiters on `loop` whenever the catalog changes (discovery writes from its own threads)."""
        self._loop = loop

        def wake(key: Key) -> None:
            if not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody is waiting
                    loop.call_soon_threadsafe(self.changed, key)

        self.catalog.subscribe(wake)

    def changed(self, key: Key) -> None:
        event = self._changed.pop(key, None)
        if event is not None:
            event.set()

    async def endpoints(self, deployment: Deployment, exclude: Collection[Endpoint] = ()) -> Deployment:
        """The deployment as soon as it has a ready endpoint outside `exclude`, holding the caller until then."""
        current: Deployment | None = deployment
        if current is not None and any(e not in exclude for e in current.endpoints):
            return current
        key = deployment.key
        labels = {"namespace": key[0], "deployment": key[1]}
        if self.held.get(key, 0) >= self.policy.max_held:
            self.metrics.errors.labels(**labels, reason="queue_full").inc()
            raise ModelStarting(deployment, "queue_full", self.policy.retry_after)
        self.held[key] = self.held.get(key, 0) + 1
        self.metrics.held.labels(**labels).inc()
        start = time.monotonic()
        deadline = start + self.policy.timeout
        try:
            while True:
                self._demand(deployment)
                event = self._changed.setdefault(key, asyncio.Event())
                current = self.catalog.get(key)
                if current is None:
                    raise LookupError(f"InferenceDeployment {key[0]}/{key[1]} was deleted while a request waited")
                if any(e not in exclude for e in current.endpoints):
                    log.info("%s/%s ready after %.2fs held", *key, time.monotonic() - start)
                    return current
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.metrics.errors.labels(**labels, reason="hold_timeout").inc()
                    raise ModelStarting(deployment, "hold_timeout", self.policy.retry_after)
                # wake on a change, or in time to renew the demand record
                with_timeout = min(remaining, self.policy.demand_interval)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), with_timeout)
        finally:
            self.held[key] -= 1
            if not self.held[key]:
                del self.held[key]
            self.metrics.held.labels(**labels).dec()
            self.metrics.held_seconds.labels(**labels).observe(time.monotonic() - start)

    def _demand(self, deployment: Deployment) -> None:
        """Record demand at most once per `demand_interval` per deployment, in the background."""
        if self.record_demand is None:
            return
        now = time.monotonic()
        if now - self._last_demand.get(deployment.key, -1e9) < self.policy.demand_interval:
            return
        self._last_demand[deployment.key] = now
        task = asyncio.get_running_loop().create_task(self._record(deployment))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _record(self, deployment: Deployment) -> None:
        assert self.record_demand is not None
        try:
            await self.record_demand(deployment)
        except Exception as e:  # demand is retried on the next interval; the request keeps waiting
            log.warning("cannot record scale-from-zero demand for %s: %s", deployment.qualified, e)
            self._last_demand.pop(deployment.key, None)
