"""The prefix cache's block hashes, one definition for the runtime that caches blocks and the gateway that routes on
them: a full block of `block_size` token ids hashes together with its predecessor's hash, so equal hashes mean equal
prefixes, and the same tokens give the same hash in every process (blake2b, never Python's per-process hash()).

The runtime publishes the hashes of blocks it stores and evicts (`GET /kv/events`); the gateway tokenizes a prompt
with the same tokenizer (`GET /kv/tokenizer`), computes `block_hashes` and routes to the replica holding the longest
run of them.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence

ROOT = 0  # the parent of a prompt's first block


def chain_hash(parent: int | None, token_ids: Sequence[int]) -> int:
    """The hash of one full block, chained on its predecessor's (None or ROOT for the first block)."""
    h = hashlib.blake2b((parent or ROOT).to_bytes(8, "little"), digest_size=8)
    h.update(array("q", token_ids).tobytes())
    return int.from_bytes(h.digest(), "little")


def block_hashes(token_ids: Sequence[int], block_size: int, limit: int | None = None) -> list[int]:
    """The chained hashes of the full blocks `token_ids` starts with (at most `limit` of them)."""
    out: list[int] = []
    parent = ROOT
    full = len(token_ids) // block_size if limit is None else min(limit, len(token_ids) // block_size)
    for i in range(full):
        parent = chain_hash(parent, token_ids[i * block_size : (i + 1) * block_size])
        out.append(parent)
    return out
