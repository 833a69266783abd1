"""Which replica serves a request: least outstanding requests, or prefix affinity with a load bound.

Least outstanding sends each request to the replica with the fewest requests in flight from this gateway (ties
rotate), which adapts to slow and fast replicas without any knowledge of them.

Prefix affinity puts requests that share a prompt's leading characters on the same replica, where the runtime's
prefix cache already holds their KV blocks. It hashes that prefix onto a consistent-hashing ring (so adding or
removing a replica moves only the keys next to it) and applies *consistent hashing with bounded loads* (Mirrokni,
Thorup and Zadimoghaddam, 2018): a replica takes a request only while its load stays within (1 + eps) x the average,
otherwise the walk goes on to the next replica on the ring, so one hot system prompt cannot overload one replica.
The bound allows `LOAD_SLACK` more requests than that: with a few requests in flight, (1 + eps) x the average is
below 2, so without it a second request for a replica's cached context would go to one that must prefill it all
while the first replica batches both (docs/benchmarks.md, KV-aware routing, measured both ways).

KV-aware routing replaces the ring for deployments whose replicas publish their prefix cache (gateway/kv.py): among
the replicas within the same load bound, the one holding the longest run of the prompt's block hashes wins (ties to
the least loaded), when that run is at least `MIN_CACHED_SHARE` of the prompt's blocks. A shorter one, typically
an application's system prompt in front of a long new document, is cheap to compute again, and following it would
put every new long context behind that system prompt on the one replica that saw it first, where they evict each
other; such a prompt, like one that no replica holds, goes to the least loaded replica (ties rotate, so new contexts
arriving one at a time spread evenly).
"""

from __future__ import annotations

import bisect
import hashlib
import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from infleet.gateway.catalog import LEAST_OUTSTANDING, PREFIX_AFFINITY, Deployment, Endpoint
from infleet.gateway.kv import KVIndex

DEFAULT_PREFIX_CHARS = 256  # about 64 tokens: a few KV blocks of a typical system prompt
DEFAULT_EPS = 0.25
LOAD_SLACK = 1  # requests a replica may take above (1 + eps) x the average; see the module docstring
MIN_CACHED_SHARE = 0.5  # of a prompt's blocks a replica must hold for KV-aware routing to follow its cache
KV_AWARE = "kvAware"  # the strategy label of a choice made on the replicas' published cache state
VIRTUAL_NODES = 100
EJECT_SECONDS = 5.0  # a replica that refused a connection is skipped this long (until discovery catches up)


def stable_hash(data: str) -> int:
    """A hash that is the same in every process (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(data.encode(), digest_size=8).digest(), "big")


class Ring:
    """A consistent-hashing ring with `VIRTUAL_NODES` points per endpoint, for even shares."""

    def __init__(self, endpoints: Iterable[Endpoint], virtual_nodes: int = VIRTUAL_NODES) -> None:
        points = sorted(
            (stable_hash(f"{e.host}:{e.port}#{i}"), e) for e in set(endpoints) for i in range(virtual_nodes)
        )
        self._hashes = [h for h, _ in points]
        self._owners = [e for _, e in points]

    def walk(self, key: str) -> list[Endpoint]:
        """Distinct endpoints clockwise from the key's point: its home first, then where it spills."""
        if not self._owners:
            return []
        start = bisect.bisect(self._hashes, stable_hash(key))
        seen: dict[Endpoint, None] = {}
        n = len(self._owners)
        for i in range(n):
            seen.setdefault(self._owners[(start + i) % n], None)
        return list(seen)


@dataclass(frozen=True)
class Choice:
    endpoint: Endpoint
    strategy: str
    affinity: str | None = None  # prefix affinity: "home" (the key's own replica) or "spill"; KV-aware: "hit"/"miss"


class Router:
    """Counts this gateway's requests in flight per replica and picks a replica per request."""

    def __init__(self, *, eps: float = DEFAULT_EPS, prefix_chars: int = DEFAULT_PREFIX_CHARS) -> None:
        if eps <= 0:
            raise ValueError("eps must be positive (the bounded-load slack)")
        self.eps = eps
        self.prefix_chars = prefix_chars
        self.outstanding: Counter[Endpoint] = Counter()
        self._rings: dict[tuple[Endpoint, ...], Ring] = {}
        self._turn = 0
        self._ejected: dict[Endpoint, float] = {}

    def eject(self, endpoint: Endpoint, seconds: float = EJECT_SECONDS) -> None:
        """Skip a replica that just failed, while others remain, until discovery removes it or time passes."""
        self._ejected[endpoint] = time.monotonic() + seconds

    def usable(self, endpoints: Iterable[Endpoint], exclude: Iterable[Endpoint] = ()) -> list[Endpoint]:
        """Endpoints not in `exclude`, without ejected ones unless nothing else is left."""
        skip = set(exclude)
        left = [e for e in endpoints if e not in skip]
        now = time.monotonic()
        healthy = [e for e in left if self._ejected.get(e, 0.0) <= now]
        return healthy or left

    def acquire(self, endpoint: Endpoint) -> None:
        self.outstanding[endpoint] += 1

    def release(self, endpoint: Endpoint) -> None:
        self.outstanding[endpoint] -= 1
        if self.outstanding[endpoint] <= 0:
            del self.outstanding[endpoint]

    def choose(
        self,
        deployment: Deployment,
        prompt: str | None,
        candidates: Sequence[Endpoint],
        hashes: Sequence[int] = (),
        index: KVIndex | None = None,
    ) -> Choice:
        """Pick among `candidates` (ready, not yet tried) with the deployment's strategy: KV-aware when the prompt's
        block hashes are known and some candidate publishes its cache, else the character ring."""
        if not candidates:
            raise ValueError(f"no candidate endpoint for {deployment.qualified}")
        if deployment.strategy == PREFIX_AFFINITY and hashes and index and any(index.live(e) for e in candidates):
            return self.kv_aware(hashes, candidates, index)
        if deployment.strategy == PREFIX_AFFINITY and prompt:
            endpoint, home = self.bounded_affinity(prompt[: self.prefix_chars], candidates)
            return Choice(endpoint, PREFIX_AFFINITY, "home" if home else "spill")
        return Choice(self.least_outstanding(candidates), LEAST_OUTSTANDING)

    def kv_aware(self, hashes: Sequence[int], candidates: Sequence[Endpoint], index: KVIndex) -> Choice:
        """The replica within the load bound holding the most of the prompt's leading blocks; the prompt is then
        expected there (KVIndex.expect) until the replica publishes its blocks."""
        capacity = self._capacity(candidates)
        scored = [(index.cached_blocks(e, hashes), e) for e in candidates if self.outstanding[e] < capacity]
        best = max((n for n, _ in scored), default=0)
        if best == 0 or best < MIN_CACHED_SHARE * len(hashes):
            choice = Choice(self.least_outstanding(candidates), KV_AWARE, "miss")
        else:
            choice = Choice(self.least_outstanding([e for n, e in scored if n == best]), KV_AWARE, "hit")
        index.expect(choice.endpoint, hashes)
        return choice

    def _capacity(self, candidates: Sequence[Endpoint]) -> int:
        """ceil((1 + eps) x (in flight + 1) / replicas) + LOAD_SLACK: some replica is always below it."""
        total = sum(self.outstanding[e] for e in candidates)
        return math.ceil((1 + self.eps) * (total + 1) / len(candidates)) + LOAD_SLACK

    def least_outstanding(self, candidates: Sequence[Endpoint]) -> Endpoint:
        fewest = min(self.outstanding[e] for e in candidates)
        tied = [e for e in candidates if self.outstanding[e] == fewest]
        if len(tied) > 1:  # sorting compares dataclasses field by field: not for the usual one
            tied.sort()
        self._turn += 1
        return tied[self._turn % len(tied)]

    def bounded_affinity(self, key: str, candidates: Sequence[Endpoint]) -> tuple[Endpoint, bool]:
        """The first replica on the key's ring walk whose load stays within the bound; True if that is its home.

        The bound counts the new request: capacity = ceil((1 + eps) x (in flight + 1) / replicas) + LOAD_SLACK.
        Some replica is always below it (the least loaded one is at or below the average), so the walk always ends.
        """
        ring = self._ring(candidates)
        capacity = self._capacity(candidates)
        walk = ring.walk(key)
        for endpoint in walk:
            if self.outstanding[endpoint] < capacity:
                return endpoint, endpoint == walk[0]
        raise AssertionError("bounded load: no replica below capacity")  # unreachable, see the docstring

    def _ring(self, candidates: Sequence[Endpoint]) -> Ring:
        key = tuple(sorted(set(candidates)))
        ring = self._rings.get(key)
        if ring is None:
            if len(self._rings) > 64:  # endpoint sets change slowly; forget old ones
                self._rings.clear()
            ring = self._rings[key] = Ring(key)
        return ring
