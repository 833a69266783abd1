"""Server-sent events as the OpenAI clients read them: `data: {json}` and a blank line, ended by `data: [DONE]`.

The runtime writes them and the gateway relays (and, when a replica fails mid-stream, ends) them."""

from __future__ import annotations

import json
from typing import Any

DONE = b"data: [DONE]\n\n"
KEEP_ALIVE = b": keep-alive\n\n"  # a comment line: clients ignore it, proxies see traffic
MEDIA_TYPE = "text/event-stream"


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def data_events(chunk: bytes) -> int:
    """Events in a chunk that carry output: `data:` lines, not the closing `[DONE]`."""
    return chunk.count(b"data:") - chunk.count(DONE.strip())
