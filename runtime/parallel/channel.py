"""How the leader tells every rank what to do next: numbered messages in the replica's TCP store.

Ranks wait on the store (not in a collective) between steps, so an idle replica never runs into a collective
timeout, and a message that is published is one every rank will act on. The leader deletes message `n - 1` when
it publishes `n`: by then every rank has finished step `n - 1` (each one's work feeds the leader's result).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch.distributed as dist

from infleet.runtime.parallel.pipeline import MicroBatch

POLL = timedelta(seconds=1)


@dataclass
class Message:
    kind: str  # "step" | "stats" | "stop"
    batches: list[MicroBatch] = field(default_factory=list)


class Channel:
    def __init__(self, store: dist.TCPStore) -> None:
        self.store = store
        self.next = 0

    def publish(self, message: Message) -> None:
        self.store.set(f"msg/{self.next}", pickle.dumps(message))  # type: ignore[arg-type]
        if self.next:
            self.store.delete_key(f"msg/{self.next - 1}")
        self.next += 1

    def receive(self) -> Message:
        """Block until the next message (waking every second so a dead leader surfaces as a store error)."""
        key = f"msg/{self.next}"
        while True:
            try:
                self.store.wait([key], POLL)
                break
            except dist.DistStoreError as exc:
                if "timeout" not in str(exc).lower():
                    raise
        message: Any = pickle.loads(self.store.get(key))
        self.next += 1
        return message
