"""The gateway's response cache: the same deterministic request, to the same deployment, from the same tenant, is
answered from memory with the bytes the replica sent the first time.

Opt-in per deployment (`spec.gateway.responseCache`). What is cached:
- only non-streamed OpenAI completions and chat completions answered 200 with a JSON body (a stream is relayed as
  it is produced and never cached);
- only deterministic requests: `temperature` 0, or an integer `seed` (an unset temperature means OpenAI's default
  of 1, so it is not deterministic by itself);
- keyed on everything that decides the answer's bytes: the tenant (a digest of the API key, "" without one), the
  deployment (namespace and name), the path, and the request body as canonical JSON (sorted keys, no spaces), with
  the model named as the replica knows it. Two tenants never share an entry, whatever they send.

Bounds: a TTL, a number of entries and a number of bytes per deployment, least recently used first out. The cache
lives in one gateway replica's memory and is only touched from its event loop (no lock).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from infleet.api.durations import seconds_or_none

CACHED_PATHS = ("/v1/completions", "/v1/chat/completions")
CACHE_HEADER = "x-infleet-cache"  # hit | miss on answers of a deployment whose cache is on
MAX_ENTRY_BYTES = 4 * 1024 * 1024  # larger answers are not kept: one would evict hundreds of small ones


@dataclass(frozen=True)
class CacheSettings:
    """A deployment's `spec.gateway.responseCache`, when enabled."""

    ttl: float = 600.0
    max_entries: int = 1024
    max_bytes: int = 64 * 1024 * 1024

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> CacheSettings | None:
        """None when the cache is off or the fields are unusable (the API server validated them already)."""
        if not spec or spec.get("enabled") is not True:
            return None
        ttl = seconds_or_none(spec.get("ttl", "10m"))
        entries, size = spec.get("maxEntries", cls.max_entries), spec.get("maxBytes", cls.max_bytes)
        if ttl is None or ttl <= 0 or not isinstance(entries, int) or not isinstance(size, int):
            return None
        return cls(ttl, max(entries, 1), max(size, 1))


@dataclass(frozen=True)
class Entry:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    expires: float


def deterministic(payload: Mapping[str, Any]) -> bool:
    """Greedy decoding or a fixed seed: the same request gives the same answer."""
    if payload.get("stream"):
        return False
    temperature, seed = payload.get("temperature"), payload.get("seed")
    greedy = isinstance(temperature, int | float) and not isinstance(temperature, bool) and temperature == 0
    seeded = isinstance(seed, int) and not isinstance(seed, bool)
    return greedy or seeded


def tenant(authorization: str | None) -> str:
    """A digest of the client's credentials: the key itself is never held."""
    return hashlib.sha256(authorization.encode()).hexdigest() if authorization else ""


def cache_key(tenant_id: str, namespace: str, deployment: str, path: str, payload: Mapping[str, Any]) -> bytes:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    parts = (tenant_id, namespace, deployment, path, canonical)
    return hashlib.sha256("\0".join(parts).encode()).digest()


@dataclass
class ResponseCache:
    """One deployment's entries: an LRU bounded in entries and bytes, each entry living `ttl` seconds."""

    settings: CacheSettings
    clock: Callable[[], float] = time.monotonic
    _entries: OrderedDict[bytes, Entry] = field(default_factory=OrderedDict)
    size: int = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= self.clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: bytes, status: int, headers: Mapping[str, str], body: bytes) -> bool:
        """Keep an answer; False when it is too large to keep."""
        if len(body) > min(MAX_ENTRY_BYTES, self.settings.max_bytes):
            return False
        if key in self._entries:
            self._drop(key)
        self._entries[key] = Entry(status, tuple(headers.items()), body, self.clock() + self.settings.ttl)
        self.size += len(body)
        while len(self._entries) > self.settings.max_entries or self.size > self.settings.max_bytes:
            self._drop(next(iter(self._entries)))
        return True

    def _drop(self, key: bytes) -> None:
        self.size -= len(self._entries.pop(key).body)


@dataclass
class ResponseCaches:
    """Every deployment's cache; a deployment whose settings change starts an empty one."""

    clock: Callable[[], float] = time.monotonic
    _caches: dict[tuple[str, str], ResponseCache] = field(default_factory=dict)

    def for_deployment(self, key: tuple[str, str], settings: CacheSettings) -> ResponseCache:
        cache = self._caches.get(key)
        if cache is None or cache.settings != settings:
            cache = self._caches[key] = ResponseCache(settings, self.clock)
        return cache
