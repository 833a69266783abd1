"""Heartbeats: if any rank of the replica dies or hangs, every other rank exits non-zero in bounded time.

Each rank bumps its counter in the replica's store every second and watches everyone else's. A counter that has
not moved for `timeout` seconds, or a store that cannot be reached (the leader hosts it), is a lost replica: the
rank calls `on_failure` (the leader turns its `/health` unhealthy there), waits `grace` seconds, and exits with
status 1, so Kubernetes restarts the group. Collectives have their own timeout as a second line.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import torch.distributed as dist

log = logging.getLogger("infleet.runtime.parallel")

EXIT_CODE = 1


class Watchdog:
    def __init__(
        self,
        store: dist.TCPStore,
        rank: int,
        world_size: int,
        *,
        timeout: float = float(os.environ.get("INFLEET_HEARTBEAT_TIMEOUT", "30")),
        interval: float = 1.0,
        grace: float = 0.0,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.rank = rank
        self.world_size = world_size
        self.timeout = timeout
        self.interval = interval
        self.grace = grace
        self.on_failure = on_failure
        self.stopped = threading.Event()
        self.failure: str | None = None
        self._thread = threading.Thread(target=self._run, name="infleet-watchdog", daemon=True)

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        """A clean shutdown: peers going away from now on is expected."""
        self.stopped.set()

    def _run(self) -> None:
        last: dict[int, tuple[int, float]] = {}
        while not self.stopped.wait(self.interval):
            try:
                self.store.add(f"hb/{self.rank}", 1)
                if self.store.check(["shutdown"]):
                    return
                now = time.monotonic()
                for peer in range(self.world_size):
                    if peer == self.rank:
                        continue
                    count = self.store.add(f"hb/{peer}", 0)
                    seen = last.get(peer)
                    if seen is None or count != seen[0]:
                        last[peer] = (count, now)
                    elif now - seen[1] > self.timeout:
                        self._fail(f"rank {peer} sent no heartbeat for {now - seen[1]:.0f}s")
                        return
            except Exception as exc:  # the store is the leader's: unreachable means the leader is gone
                if self.stopped.is_set():
                    return
                self._fail(f"the replica's store is unreachable ({type(exc).__name__}: {exc})")
                return

    def _fail(self, reason: str) -> None:
        self.failure = reason
        log.error("rank %d: %s; leaving so that the group restarts", self.rank, reason)
        if self.on_failure is not None:
            try:
                self.on_failure(reason)
            except Exception:
                log.exception("failure callback failed")
        time.sleep(self.grace)
        logging.shutdown()
        os._exit(EXIT_CODE)
