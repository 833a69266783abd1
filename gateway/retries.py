"""How many retries the gateway may spend: a retry budget per deployment, so a fleet that refuses everything is not
hit twice as hard by its own gateway.

Retries before the first byte are cheap for one request and dangerous for a fleet: when every replica is full, a
gateway that retries each 429 multiplies the load that made them full. The budget is the one Finagle and Linkerd use:
every request deposits `ratio` of a retry, every retry withdraws one, and a small floor refills with time so that a
quiet deployment can still retry its rare failure. Retries therefore stay under about `ratio` x requests plus
`floor_per_second` x seconds; a request whose retry the budget refuses gets the replica's own answer (429, 503), or a
502 when the replica could not be reached.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

DEFAULT_RATIO = 0.2  # Linkerd's default: retries add at most 20% to the requests
DEFAULT_FLOOR = 10.0  # retries per second any deployment may spend, however quiet
MAX_BALANCE_SECONDS = 10.0  # the balance is capped at what the floor earns in this long (at least one retry)


@dataclass
class RetryBudget:
    ratio: float = DEFAULT_RATIO
    floor_per_second: float = DEFAULT_FLOOR
    balance: float = field(init=False)
    _cap: float = field(init=False)
    _last: float = field(init=False, default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.ratio < 0 or self.floor_per_second < 0:
            raise ValueError("a retry budget's ratio and floor must not be negative")
        self._cap = max(1.0, self.floor_per_second * MAX_BALANCE_SECONDS)
        self.balance = self._cap if self.floor_per_second else 0.0  # a ratio alone starts with nothing saved

    def deposit(self) -> None:
        """A request arrived: it earns `ratio` of a retry."""
        self.balance = min(self._cap, self.balance + self.ratio)

    def withdraw(self) -> bool:
        """Spend one retry if the budget holds one."""
        now = time.monotonic()
        self.balance = min(self._cap, self.balance + self.floor_per_second * (now - self._last))
        self._last = now
        if self.balance < 1.0:
            return False
        self.balance -= 1.0
        return True
