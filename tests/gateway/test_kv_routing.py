"""KV-aware routing: the gateway computes the runtime's own block hashes, follows each replica's KV event stream over
real HTTP (the runtime's event module and block manager behind a small server), routes to the replica holding the
prompt's prefix, stops when the blocks are evicted, and forgets a replica that dies."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from infleet.api.prefix import block_hashes
from infleet.cluster.testing import wait_for
from infleet.gateway import kv
from infleet.gateway.app import Gateway
from infleet.gateway.catalog import PREFIX_AFFINITY
from infleet.gateway.kv import PromptHasher
from infleet.runtime.engine.kv_cache import STORED, BlockManager
from infleet.runtime.engine.sampler import SamplingParams
from infleet.runtime.engine.sequence import Sequence
from infleet.runtime.server import kv_events
from infleet.runtime.server.app import ServerState

from .conftest import ServerThread, Upstream, serve_gateway

BLOCK = 16
SYSTEM = "You are a careful assistant for the infleet project. " * 6  # several blocks of shared context


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    import gguf

    from infleet.runtime.loader.gguf import read_config, read_tokenizer
    from infleet.runtime.loader.smollm2 import smollm2_gguf

    reader = gguf.GGUFReader(smollm2_gguf())
    return read_tokenizer(reader, read_config(reader, "smollm2"))


def runtime_ids(tok: Any, body: dict[str, Any]) -> list[int]:
    """Token ids as the runtime's OpenAI handlers encode them."""
    if "messages" in body:
        return list(tok.encode(tok.apply_chat_template(body["messages"]), add_special_tokens=False))
    return list(tok.encode(body["prompt"], add_special_tokens=True))


def cache(bm: BlockManager, ids: list[int], rid: str = "r") -> Sequence:
    """What the engine does for a prompt it admits and computes: its full blocks are stored."""
    seq = Sequence(rid, list(ids), len(ids), SamplingParams())
    bm.match_prefix(seq)
    assert bm.allocate(seq, seq.num_uncomputed_tokens)
    seq.num_computed_tokens = seq.num_tokens
    bm.commit_full_blocks(seq)
    return seq


_hashers: dict[int, PromptHasher] = {}


def hasher_for(tokenizer: Any, block_size: int) -> PromptHasher:
    """The gateway's hasher, built from what `/kv/tokenizer` hands out (once per block size: it parses 49k tokens)."""
    if block_size not in _hashers:
        _hashers[block_size] = PromptHasher.from_json(kv_events.tokenizer_doc(tokenizer, block_size))
    return _hashers[block_size]


@settings(max_examples=40, deadline=None)
@given(
    text=st.text(min_size=0, max_size=300),
    chat=st.booleans(),
    block_size=st.sampled_from([1, 4, 16]),
)
def test_gateway_and_runtime_compute_identical_block_hashes(
    tokenizer: Any, text: str, chat: bool, block_size: int
) -> None:
    body: dict[str, Any] = {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]}
    if not chat:
        body = {"prompt": text}
    stored: list[int] = []
    bm = BlockManager(num_blocks=512, block_size=block_size)
    bm.listener = lambda kind, hashes: stored.extend(hashes) if kind == STORED else None
    ids = runtime_ids(tokenizer, body)
    cache(bm, ids)
    hasher = hasher_for(tokenizer, block_size)
    assert hasher.token_ids(body) == ids
    assert hasher.hashes(body) == stored[:512] == block_hashes(ids, block_size)[:512]


class Replica:
    """A runtime's KV surface (its real event hub over a real block manager) plus a chat route naming itself."""

    def __init__(self, name: str, tok: Any) -> None:
        self.name = name
        self.bm = BlockManager(num_blocks=12, block_size=BLOCK)
        hub = kv_events.KVEvents(BLOCK)
        self.bm.listener = hub.publish

        async def chat(request: Request) -> JSONResponse:
            await request.body()
            return JSONResponse({"replica": name})

        app = Starlette(
            routes=[
                Route("/kv/events", kv_events.events),
                Route("/kv/tokenizer", kv_events.tokenizer),
                Route("/v1/chat/completions", chat, methods=["POST"]),
            ]
        )
        app.state.kv_events = hub
        app.state.serving = SimpleNamespace(state=ServerState(ready=True), engine=SimpleNamespace(tokenizer=tok))
        self.server = ServerThread(app)


@pytest.fixture
def fleet(tokenizer: Any) -> Iterator[tuple[Gateway, ServerThread, Replica, Replica]]:
    a, b = Replica("a", tokenizer), Replica("b", tokenizer)
    with a.server, b.server:
        gateway = Gateway()
        gateway.catalog.set_deployment("ns", "d", "m", PREFIX_AFFINITY)
        gateway.catalog.set_slice("ns", "d", "s", (a.server.endpoint, b.server.endpoint))
        with serve_gateway(gateway) as gw:
            yield gateway, gw, a, b


def test_routes_to_the_cached_prefix_until_evicted_and_forgets_a_dead_replica(
    fleet: tuple[Gateway, ServerThread, Replica, Replica], tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway, gw, a, b = fleet
    # routing on published state alone: these replicas never compute what they are sent, so no prompt may be
    # expected where it went (test_routing.py covers those expectations)
    monkeypatch.setattr(kv, "EXPECT_SECONDS", 0.0)
    index, key = gateway.kv.index, ("ns", "d")

    def ask(question: str) -> str:
        turns = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
        body = {"model": "m", "messages": turns}
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 200, r.text
        return str(r.json()["replica"])

    ask("warm up")  # the first request starts the subscriptions and the tokenizer fetch
    wait_for(
        lambda: key in gateway.kv.hashers and index.live(a.server.endpoint) and index.live(b.server.endpoint),
        timeout=30, interval=0.05, what="the KV feeds and the tokenizer",
    )  # fmt: skip
    shared = runtime_ids(tokenizer, {"messages": [{"role": "system", "content": SYSTEM}]})
    seq = cache(a.bm, [*shared, 1, 2, 3])
    wait_for(lambda: index.cached_blocks(a.server.endpoint, block_hashes(shared, BLOCK)) >= 3, timeout=10,
             interval=0.02, what="a's stored blocks at the gateway")  # fmt: skip
    assert {ask(f"question {i}") for i in range(6)} == {"a"}  # every request goes where its prefix is cached
    hits = gateway.metrics.registry.get_sample_value(
        "infleet_gateway_prefix_affinity_total", {"namespace": "ns", "deployment": "d", "result": "hit"}
    )
    assert hits == 6

    # eviction: a's blocks are reused for another prompt, the removed events reach the gateway, the routes go
    a.bm.free_sequence(seq)
    other = cache(a.bm, list(range(1000, 1000 + 12 * BLOCK)), rid="other")
    wait_for(lambda: index.cached_blocks(a.server.endpoint, block_hashes(shared, BLOCK)) == 0, timeout=10,
             interval=0.02, what="a's evictions at the gateway")  # fmt: skip
    assert {ask(f"after eviction {i}") for i in range(6)} == {"a", "b"}  # no cache anywhere: least outstanding
    a.bm.free_sequence(other)
    cache(a.bm, shared, rid="again")
    wait_for(lambda: index.cached_blocks(a.server.endpoint, block_hashes(shared, BLOCK)) >= 3, timeout=10,
             interval=0.02, what="a's stored blocks again")  # fmt: skip
    assert {ask(f"back to a {i}") for i in range(4)} == {"a"}

    # a replica that dies: its stream breaks and its entries go at once (the TTL covers one that merely falls silent)
    b.server.__exit__(None, None, None)
    wait_for(lambda: b.server.endpoint not in index.held and not index.live(b.server.endpoint), timeout=15,
             interval=0.05, what="the dead replica's entries to expire")  # fmt: skip


def test_replicas_that_publish_nothing_keep_the_character_ring(upstream: tuple[Upstream, ServerThread]) -> None:
    """An engine without KV events (here a replica answering JSON to every path, as a 404 would do too) is marked
    as publishing nothing, and its deployment's requests are routed on the character ring."""
    _, replica = upstream
    gateway = Gateway()
    gateway.catalog.set_deployment("ns", "d", "m", PREFIX_AFFINITY)
    gateway.catalog.set_slice("ns", "d", "s", (replica.endpoint,))
    with serve_gateway(gateway) as gw:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        assert httpx.post(f"{gw.url}/v1/chat/completions", json=body).status_code == 200
        wait_for(lambda: replica.endpoint in gateway.kv._unsupported, timeout=10, interval=0.02, what="the probe")
        assert httpx.post(f"{gw.url}/v1/chat/completions", json=body).status_code == 200
        ring = gateway.metrics.registry.get_sample_value(
            "infleet_gateway_routing_decisions_total",
            {"namespace": "ns", "deployment": "d", "strategy": PREFIX_AFFINITY},
        )
        assert ring == 2 and not gateway.kv.index.held


def test_kv_routing_off_keeps_the_character_ring(fleet: tuple[Gateway, ServerThread, Replica, Replica]) -> None:
    """`infleet gateway run --no-kv-routing`: replicas that publish are not followed, the ring decides."""
    gateway, gw, _, _ = fleet
    gateway.kv_routing = False
    body = {"model": "m", "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}]}
    for _ in range(3):
        assert httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=30).status_code == 200
    ring = gateway.metrics.registry.get_sample_value(
        "infleet_gateway_routing_decisions_total", {"namespace": "ns", "deployment": "d", "strategy": PREFIX_AFFINITY}
    )
    assert ring == 3 and not gateway.kv.hashers and not gateway.kv._feeds
