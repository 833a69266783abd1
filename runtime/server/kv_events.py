"""The prefix cache's state for the gateway's KV-aware routing: `GET /kv/events` and `GET /kv/tokenizer`.

`/kv/events` is an SSE stream: first a snapshot of every block hash the cache holds (with the block size), then an
event per change, `{"type": "stored"|"removed", "hashes": [...]}`, and a keep-alive comment every few seconds so a
subscriber can tell a silent replica from a dead one. The hashes are `infleet.api.prefix.chain_hash`, the ones the
block manager itself keys its cache by. `/kv/tokenizer` hands out the tokenizer and chat template, so the gateway
tokenizes a prompt exactly as this replica will. vLLM publishes the same kind of events over ZeroMQ; SSE needs no
other port and passes through anything that passes HTTP.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from infleet.api import sse
from infleet.runtime.engine.kv_cache import STORED

if TYPE_CHECKING:
    from infleet.runtime.engine.engine import AsyncEngine

KEEP_ALIVE_SECONDS = 2.0
MAX_BACKLOG = 10_000  # events queued for one subscriber; past it the stream ends and the subscriber resyncs


class KVEvents:
    """A mirror of the cache's hashes and the subscribers' queues, fed by the block manager on the engine's thread."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self._lock = threading.Lock()
        self._hashes: set[int] = set()
        self._queues: dict[asyncio.Queue[bytes | None], asyncio.AbstractEventLoop] = {}

    @classmethod
    def attach(cls, engine: AsyncEngine) -> KVEvents:
        manager = engine.engine.block_manager
        hub = cls(manager.block_size)
        hub._hashes.update(manager.cached)
        manager.listener = hub.publish
        return hub

    def publish(self, kind: str, hashes: list[int]) -> None:
        with self._lock:
            if kind == STORED:
                self._hashes.update(hashes)
            else:
                self._hashes.difference_update(hashes)
            if not self._queues:
                return
            data = sse.event({"type": kind, "hashes": hashes})
            for queue, loop in self._queues.items():
                item = data if queue.qsize() < MAX_BACKLOG else None  # None ends a stream that fell behind
                loop.call_soon_threadsafe(queue.put_nowait, item)

    def subscribe(self) -> tuple[bytes, asyncio.Queue[bytes | None]]:
        """The snapshot and the queue of every change after it (taken under one lock: no gap, no repeat)."""
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        with self._lock:
            snapshot = {"type": "snapshot", "block_size": self.block_size, "hashes": sorted(self._hashes)}
            self._queues[queue] = asyncio.get_running_loop()
        return sse.event(snapshot), queue

    def unsubscribe(self, queue: asyncio.Queue[bytes | None]) -> None:
        with self._lock:
            self._queues.pop(queue, None)


async def events(request: Request) -> Response:
    hub: KVEvents = request.app.state.kv_events
    state = request.app.state.serving.state
    snapshot, queue = hub.subscribe()

    async def stream() -> AsyncIterator[bytes]:
        try:
            yield snapshot
            while not state.draining:  # an endless stream must not hold the server's shutdown
                try:
                    item = await asyncio.wait_for(queue.get(), KEEP_ALIVE_SECONDS)
                except TimeoutError:
                    yield sse.KEEP_ALIVE
                    continue
                if item is None:
                    return
                yield item
        finally:
            hub.unsubscribe(queue)

    return StreamingResponse(stream(), media_type=sse.MEDIA_TYPE, headers={"cache-control": "no-cache"})


def tokenizer_doc(tok: Any, block_size: int) -> dict[str, Any]:
    """What a client needs to compute this replica's block hashes for a request."""
    return {
        "block_size": block_size,
        "tokenizer": tok.hf.to_str(),
        "chat_template": tok.chat_template,
        "bos_token": tok.bos_token or "",
        "eos_token": tok.eos_token,
    }


async def tokenizer(request: Request) -> Response:
    doc = tokenizer_doc(request.app.state.serving.engine.tokenizer, request.app.state.kv_events.block_size)
    return JSONResponse(doc)
