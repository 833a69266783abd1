"""Model sources: which URIs are fetched into the model cache, where a fetched model lives in it, and the reasons a
fetch fails. The fetcher (`infleet.runtime.fetch`) writes these; the operator reads them back from the init
container's termination message into the `ModelReady` condition."""

from __future__ import annotations

import enum
import hashlib
from urllib.parse import urlparse

# fetched into the cache by `infleet model pull` (an init container); pvc:// and file:// are mounted or local
REMOTE_SCHEMES = ("hf", "s3", "gs", "https", "http")


class Reason(enum.Enum):
    """Why a fetch failed; the value is the fetcher's exit code, the name the condition's reason."""

    NotFound = 10
    Unauthorized = 11
    StoreUnreachable = 12
    ChecksumMismatch = 13
    DiskFull = 14


def is_remote(uri: str) -> bool:
    return urlparse(uri).scheme in REMOTE_SCHEMES


def entry_name(uri: str, revision: str | None) -> str:
    """The cache directory of one URI at one revision: the same on every pod, so a shared cache is reused."""
    key = f"{uri}@{revision or ''}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


PROGRESS_PREFIX = "Fetching: "


def progress_line(done: int, total: int | None) -> str:
    """What the fetcher prints every few seconds while it downloads (the operator reads the last one)."""
    return f"{PROGRESS_PREFIX}{done} of {total if total is not None else '?'} bytes"


def progress_of(line: str) -> tuple[int, int | None] | None:
    """`progress_line`'s (done, total) back; None for any other line."""
    if not line.startswith(PROGRESS_PREFIX):
        return None
    done, _, rest = line.removeprefix(PROGRESS_PREFIX).partition(" of ")
    total = rest.removesuffix(" bytes")
    try:
        return int(done), (int(total) if total != "?" else None)
    except ValueError:
        return None


def failure_of(message: str) -> tuple[Reason, str] | None:
    """`REASON: message` (the fetcher's last line and termination message) -> (reason, message); None otherwise."""
    for line in reversed(message.strip().splitlines()):
        name, sep, rest = line.partition(": ")
        if sep and name in Reason.__members__:
            return Reason[name], rest.strip()
    return None
