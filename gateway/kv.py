"""KV-aware routing's knowledge: which replica holds which prefix-cache blocks, read from the replicas themselves.

Each replica of a prefix-affinity deployment that publishes its cache (`GET /kv/events` on the infleet runtime) is
followed by one SSE subscription: a snapshot at connect, then stored/removed events, keep-alives in between. A
replica whose stream breaks (killed, restarted, gone) is forgotten at once; one that falls silent for longer than
EXPIRE_SECONDS counts as holding nothing. The deployment's tokenizer (`GET /kv/tokenizer`, fetched once and cached)
turns a request into the same block hashes the replica computes (`infleet.api.prefix`). A replica answering 404 (an
engine that publishes nothing, such as vLLM without its KV events) leaves the deployment on the character ring.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from tokenizers import Tokenizer as HFTokenizer

from infleet.api.chat import render_chat
from infleet.api.prefix import block_hashes
from infleet.gateway.catalog import Deployment, Endpoint, Key
from infleet.gateway.prompts import content_text

log = logging.getLogger("infleet.gateway.kv")

EXPIRE_SECONDS = 10.0  # a replica silent this long (its keep-alives come every 2 s) holds nothing for routing
RETRY_SECONDS = 2.0  # between reconnects of a broken stream
UNSUPPORTED_SECONDS = 60.0  # before asking again a replica that publishes nothing
IDLE_SECONDS = 300.0  # a feed whose replica no request has named this long stops
EXPECT_SECONDS = 30.0  # a prompt routed to a replica counts as cached there this long, or until its blocks are stored
MAX_BLOCKS = 512  # hashes computed per prompt: 8k tokens of 16-token blocks


@dataclass
class PromptHasher:
    """A deployment's tokenizer and chat template: a request's body to the block hashes a replica stores."""

    hf: HFTokenizer
    block_size: int
    chat_template: str | None
    bos_token: str
    eos_token: str

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PromptHasher:
        return cls(
            HFTokenizer.from_str(doc["tokenizer"]),
            int(doc["block_size"]),
            doc.get("chat_template"),
            doc.get("bos_token") or "",
            doc.get("eos_token") or "",
        )

    def token_ids(self, body: dict[str, Any]) -> list[int] | None:
        """The prompt's token ids as the runtime encodes them (chat: the template's text without added special
        tokens; completion: the text with them, or the ids given), or None for a body without one."""
        messages = body.get("messages")
        if isinstance(messages, list):
            if self.chat_template is None:
                return None
            turns = [{**m, "content": content_text(m.get("content"))} for m in messages if isinstance(m, dict)]
            try:
                text = render_chat(self.chat_template, turns, bos_token=self.bos_token, eos_token=self.eos_token)
            except Exception:  # the replica will refuse it with its own message; routing needs no opinion
                return None
            return list(self.hf.encode(text, add_special_tokens=False).ids)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # a batch: the first prompt stands for it
        if isinstance(prompt, str):
            return list(self.hf.encode(prompt, add_special_tokens=True).ids)
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            return prompt
        return None

    def hashes(self, body: dict[str, Any]) -> list[int]:
        ids = self.token_ids(body)
        return block_hashes(ids, self.block_size, MAX_BLOCKS) if ids else []


@dataclass
class KVIndex:
    """Block hashes each replica holds, those it is expected to hold soon, and when it was last heard from.

    A replica publishes a prompt's blocks only once it has computed them, seconds after the request under load. The
    prompts routed to it meanwhile are *expected* there (as SGLang's router and llm-d's estimated prefix index do),
    so that a burst sharing a context lands where the first of it is being computed instead of on every replica.
    An expectation ends when the blocks are stored or removed, or after EXPECT_SECONDS (a request that failed).
    """

    held: dict[Endpoint, set[int]] = field(default_factory=dict)
    heard: dict[Endpoint, float] = field(default_factory=dict)
    expected: dict[Endpoint, dict[int, float]] = field(default_factory=dict)  # hash -> until (monotonic)

    def apply(self, endpoint: Endpoint, event: dict[str, Any]) -> None:
        kind, hashes = event.get("type"), event.get("hashes") or []
        if kind == "snapshot":
            self.held[endpoint] = set(hashes)
        elif kind == "stored":
            self.held.setdefault(endpoint, set()).update(hashes)
        elif kind == "removed":
            self.held.get(endpoint, set()).difference_update(hashes)
        if kind in ("stored", "removed") and endpoint in self.expected:
            for h in hashes:
                self.expected[endpoint].pop(h, None)
        self.touch(endpoint)

    def expect(self, endpoint: Endpoint, hashes: Sequence[int]) -> None:
        """The prompt with these block hashes was just sent to `endpoint`: count them as cached there for now."""
        now = time.monotonic()
        mine = self.expected.setdefault(endpoint, {})
        if len(mine) > 4 * MAX_BLOCKS:  # drop the lapsed ones now and then
            for h in [h for h, until in mine.items() if until <= now]:
                del mine[h]
        held = self.held.get(endpoint, ())
        mine.update((h, now + EXPECT_SECONDS) for h in hashes if h not in held)

    def touch(self, endpoint: Endpoint) -> None:
        self.heard[endpoint] = time.monotonic()

    def forget(self, endpoint: Endpoint) -> None:
        self.held.pop(endpoint, None)
        self.heard.pop(endpoint, None)
        self.expected.pop(endpoint, None)

    def live(self, endpoint: Endpoint) -> bool:
        return time.monotonic() - self.heard.get(endpoint, -EXPIRE_SECONDS * 2) <= EXPIRE_SECONDS

    def cached_blocks(self, endpoint: Endpoint, hashes: Sequence[int]) -> int:
        """How many of the prompt's leading blocks the replica holds or is expected to (0 if it has gone quiet)."""
        if not self.live(endpoint):
            return 0
        held, expected, now = self.held.get(endpoint, set()), self.expected.get(endpoint, {}), time.monotonic()
        n = 0
        for h in hashes:
            if h not in held and expected.get(h, 0.0) <= now:
                break
            n += 1
        return n


@dataclass
class KVFeeds:
    """The subscriptions and tokenizers, run on the gateway's event loop with its upstream client."""

    index: KVIndex = field(default_factory=KVIndex)
    client: aiohttp.ClientSession | None = None
    hashers: dict[Key, PromptHasher] = field(default_factory=dict)
    _fetching: dict[Key, float] = field(default_factory=dict)  # tokenizer fetch started (or last failed) at
    _feeds: dict[Endpoint, asyncio.Task[None]] = field(default_factory=dict)
    _wanted: dict[Endpoint, float] = field(default_factory=dict)
    _unsupported: dict[Endpoint, float] = field(default_factory=dict)

    def follow(self, deployment: Deployment) -> PromptHasher | None:
        """Keep a subscription open to each of the deployment's replicas; its hasher once fetched (else None)."""
        if self.client is None:
            return None
        now = time.monotonic()
        for endpoint in deployment.endpoints:
            self._wanted[endpoint] = now
            if endpoint not in self._feeds and now - self._unsupported.get(endpoint, -UNSUPPORTED_SECONDS) >= (
                UNSUPPORTED_SECONDS
            ):
                self._feeds[endpoint] = asyncio.create_task(self._feed(endpoint), name=f"kv-feed {endpoint.url}")
        hasher = self.hashers.get(deployment.key)
        if hasher is None and deployment.endpoints and now - self._fetching.get(deployment.key, -60.0) >= 60.0:
            self._fetching[deployment.key] = now
            task = asyncio.create_task(self._fetch_hasher(deployment.key, deployment.endpoints))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return hasher

    def publishing(self, endpoints: Iterable[Endpoint]) -> bool:
        return any(self.index.live(e) for e in endpoints)

    async def close(self) -> None:
        tasks = list(self._feeds.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._feeds.clear()

    async def _fetch_hasher(self, key: Key, endpoints: Sequence[Endpoint]) -> None:
        assert self.client is not None
        for endpoint in endpoints:
            try:
                async with self.client.get(endpoint.url + "/kv/tokenizer") as r:
                    if r.status == 200:
                        doc = json.loads(await r.read())
                        self.hashers[key] = await asyncio.to_thread(PromptHasher.from_json, doc)
                        return
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as e:
                log.info("no tokenizer from %s for KV-aware routing: %s", endpoint.url, e)

    async def _feed(self, endpoint: Endpoint) -> None:
        """Follow one replica's events until it is no longer wanted; forget it whenever the stream breaks."""
        assert self.client is not None
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=EXPIRE_SECONDS)
        try:
            while time.monotonic() - self._wanted.get(endpoint, 0.0) < IDLE_SECONDS:
                try:
                    async with self.client.get(endpoint.url + "/kv/events", timeout=timeout) as r:
                        if r.status == 404 or (r.status == 200 and r.content_type != "text/event-stream"):
                            self._unsupported[endpoint] = time.monotonic()  # an engine that publishes nothing
                            return
                        if r.status == 200:
                            async for line in r.content:
                                if line.startswith(b"data: "):
                                    self.index.apply(endpoint, json.loads(line[6:]))
                                elif line.startswith(b":"):
                                    self.index.touch(endpoint)
                except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                    log.debug("KV events of %s broke: %s", endpoint.url, e)
                self.index.forget(endpoint)
                await asyncio.sleep(RETRY_SECONDS)
        finally:
            self.index.forget(endpoint)
            self._feeds.pop(endpoint, None)
