"""Optional API keys, each scoped to the namespaces whose InferenceDeployments it may reach.

Keys come from Secrets labelled `infleet.dev/api-keys=true` in the gateway's namespace (or a YAML file for local
runs): each data entry is `<api key>: <namespaces>`, namespaces comma-separated or `*` for all. Clients send
`Authorization: Bearer <key>`. Only SHA-256 digests are kept in memory, and no key or header is ever logged.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from pathlib import Path

import yaml

API_KEYS_LABEL = "infleet.dev/api-keys"
ALL = "*"

Scope = frozenset[str] | None  # None: every namespace


class Unauthorized(Exception):
    status = 401


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_scope(value: str | list[str]) -> Scope:
    names = value if isinstance(value, list) else value.split(",")
    names = [str(n).strip() for n in names if str(n).strip()]
    return None if ALL in names else frozenset(names)


class KeyStore:
    """Keys by source (one Secret, or the file), so that a changed or deleted Secret replaces only its own keys."""

    def __init__(self, enabled: bool = False) -> None:
        self.enabled = enabled
        self._lock = threading.Lock()
        self._sources: dict[str, dict[bytes, Scope]] = {}

    def __repr__(self) -> str:  # never show keys, not even their digests
        return f"KeyStore(enabled={self.enabled}, sources={len(self._sources)})"

    def set_source(self, source: str, entries: Mapping[str, str | list[str]]) -> None:
        keys = {_digest(k): parse_scope(v) for k, v in entries.items() if k}
        with self._lock:
            self._sources[source] = keys

    def remove_source(self, source: str) -> None:
        with self._lock:
            self._sources.pop(source, None)

    def replace(self, sources: Mapping[str, Mapping[str, str | list[str]]]) -> None:
        with self._lock:
            self._sources = {}
        for name, entries in sources.items():
            self.set_source(name, entries)

    def load_file(self, path: Path) -> None:
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of API key -> namespaces ('*' for all)")
        self.set_source(f"file:{path}", {str(k): v for k, v in data.items()})

    def authorize(self, authorization: str | None) -> Scope:
        """The namespaces a request may reach (None: all). Raises Unauthorized with a message safe to return."""
        if not self.enabled:
            return None
        if not authorization:
            raise Unauthorized("missing API key: send the header 'Authorization: Bearer <key>'")
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized("malformed Authorization header: expected 'Bearer <key>'")
        digest = _digest(key.strip())
        with self._lock:
            scopes = [keys[digest] for keys in self._sources.values() if digest in keys]
        if not scopes:
            raise Unauthorized("invalid API key")
        if any(s is None for s in scopes):
            return None
        return frozenset().union(*[s for s in scopes if s is not None])
