"""Routing: least outstanding, consistent-hashing stability, the bounded-load spill of prefix affinity, and KV-aware
routing's expected blocks."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infleet.gateway.catalog import LEAST_OUTSTANDING, PREFIX_AFFINITY, Deployment, Endpoint
from infleet.gateway.retries import RetryBudget
from infleet.gateway.routing import LOAD_SLACK, Ring, Router

EPS = [Endpoint(f"127.0.0.{i}", 8000) for i in range(1, 5)]


def deployment(strategy: str, endpoints: list[Endpoint] = EPS) -> Deployment:
    return Deployment("ns", "d", "m", strategy, tuple(endpoints))


def test_least_outstanding_picks_the_replica_with_fewest_in_flight() -> None:
    router = Router()
    for e, n in zip(EPS, [3, 1, 2, 5], strict=True):
        for _ in range(n):
            router.acquire(e)
    choice = router.choose(deployment(LEAST_OUTSTANDING), "any prompt", EPS)
    assert choice == type(choice)(EPS[1], LEAST_OUTSTANDING, None)
    router.release(EPS[0])
    router.release(EPS[0])
    router.release(EPS[0])  # now EPS[0] has none in flight
    assert router.least_outstanding(EPS) == EPS[0]
    assert EPS[0] not in router.outstanding  # released to zero: no stale entry


def test_least_outstanding_spreads_ties_over_every_replica() -> None:
    router = Router()
    picks = []
    for _ in range(8):
        e = router.least_outstanding(EPS)
        router.acquire(e)
        picks.append(e)
    assert sorted(picks) == sorted(EPS * 2)


def test_ring_is_stable_across_instances_and_processes() -> None:
    """blake2b, not Python's salted hash(): two gateways (or restarts) agree on every key's home."""
    keys = [f"system prompt {i}" for i in range(200)]
    a, b = Ring(EPS), Ring(list(reversed(EPS)))
    assert [a.walk(k)[0] for k in keys] == [b.walk(k)[0] for k in keys]
    assert Ring(EPS).walk("fixed")[0] == Ring(EPS).walk("fixed")[0]
    assert sorted(a.walk("x")) == sorted(EPS)  # the walk visits every replica once


def test_adding_a_replica_moves_only_keys_to_it() -> None:
    keys = [f"tenant-{i}: you are a helpful assistant" for i in range(2000)]
    before = Ring(EPS)
    new = Endpoint("127.0.0.9", 8000)
    after = Ring([*EPS, new])
    moved = [k for k in keys if before.walk(k)[0] != after.walk(k)[0]]
    assert all(after.walk(k)[0] == new for k in moved)
    # about 1/5 of the keys should move; allow generous slack for the hash's variance
    assert 0.1 < len(moved) / len(keys) < 0.3
    # and shares stay even-ish: every replica owns between half and twice its fair share
    owners = [after.walk(k)[0] for k in keys]
    for e in after.walk("x"):
        assert 0.5 / 5 < owners.count(e) / len(keys) < 2 / 5


def test_prefix_affinity_sends_a_shared_prefix_home_while_load_allows() -> None:
    router = Router(prefix_chars=32)
    system = "You are a terse assistant for ACME Corp. Answer in one line."
    homes = {router.choose(deployment(PREFIX_AFFINITY), system + f" user {i}", EPS).endpoint for i in range(10)}
    assert len(homes) == 1  # only the first 32 characters count, and they are shared


def test_bounded_load_spills_a_hot_prefix_to_the_next_replica() -> None:
    router = Router(eps=0.25, prefix_chars=64)
    d = deployment(PREFIX_AFFINITY)
    key = "hot system prompt"
    walk = router._ring(EPS).walk(key)
    first = router.choose(d, key, EPS)
    assert first.endpoint == walk[0] and first.affinity == "home"
    # keep everything in flight: the home replica fills to the bound, then the walk's next replica takes over
    chosen = [first.endpoint]
    router.acquire(first.endpoint)
    for _ in range(11):
        c = router.choose(d, key, EPS)
        router.acquire(c.endpoint)
        chosen.append(c.endpoint)
    total = len(chosen)
    # at every step no replica went above ceil(1.25 x average) + the slack
    assert max(router.outstanding.values()) <= math.ceil(1.25 * total / len(EPS)) + LOAD_SLACK
    assert chosen.count(walk[0]) >= chosen.count(walk[-1])
    spills = [e for e in chosen if e != walk[0]]
    assert spills and spills[0] == walk[1]  # it spills in ring order, not at random


def test_prefix_affinity_without_a_prompt_falls_back_to_least_outstanding() -> None:
    router = Router()
    assert router.choose(deployment(PREFIX_AFFINITY), None, EPS).strategy == LEAST_OUTSTANDING


@settings(max_examples=200, deadline=None)
@given(
    loads=st.lists(st.integers(0, 50), min_size=1, max_size=6),
    key=st.text(max_size=40),
    eps=st.sampled_from([0.05, 0.25, 1.0]),
)
def test_bounded_load_always_finds_a_replica_under_the_bound(loads: list[int], key: str, eps: float) -> None:
    endpoints = EPS[: len(loads)] if len(loads) <= 4 else [*EPS, *(Endpoint("127.0.1.1", p) for p in (1, 2))]
    endpoints = endpoints[: len(loads)]
    router = Router(eps=eps)
    for e, n in zip(endpoints, loads, strict=True):
        for _ in range(n):
            router.acquire(e)
    chosen, home = router.bounded_affinity(key, endpoints)
    capacity = math.ceil((1 + eps) * (sum(loads) + 1) / len(endpoints)) + LOAD_SLACK
    assert router.outstanding[chosen] < capacity
    walk = router._ring(endpoints).walk(key)
    assert home == (chosen == walk[0])
    # it is the first replica on the walk under the bound
    assert all(router.outstanding[e] >= capacity for e in walk[: walk.index(chosen)])


def test_ejected_replicas_are_skipped_while_others_remain() -> None:
    router = Router()
    router.eject(EPS[0])
    assert EPS[0] not in router.usable(EPS)
    assert router.usable([EPS[0]]) == [EPS[0]]  # the only one left is still tried
    assert router.usable(EPS, exclude=[EPS[1]]) == [EPS[2], EPS[3]]


def test_retry_budget_is_ratio_of_requests_plus_floor() -> None:
    budget = RetryBudget(ratio=0.25, floor_per_second=0.0)
    spent = 0
    for _ in range(40):
        budget.deposit()
        spent += budget.withdraw()
    assert spent == 10  # one retry per four requests, no more
    quiet = RetryBudget(ratio=0.0, floor_per_second=1000.0)
    assert all(quiet.withdraw() for _ in range(100))  # the floor's saved balance
    with pytest.raises(ValueError, match="negative"):
        RetryBudget(ratio=-1)


def test_kv_aware_sends_a_burst_where_its_prefix_is_being_computed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before a replica publishes a prompt's blocks, prompts sharing them follow the first one there (not least
    outstanding everywhere); the expectation ends when the blocks are stored or removed, or after EXPECT_SECONDS."""
    from infleet.gateway import kv

    now = [1000.0]
    monkeypatch.setattr(kv.time, "monotonic", lambda: now[0])
    index = kv.KVIndex()
    for e in EPS:
        index.touch(e)
    router, d = Router(eps=4.0), deployment(PREFIX_AFFINITY)
    shared, other = [11, 12, 13], [21, 22]
    first = router.choose(d, None, EPS, shared, index)
    assert first.affinity == "miss"
    router.acquire(first.endpoint)
    follow = [router.choose(d, None, EPS, [*shared, 100 + i], index) for i in range(3)]
    assert {c.endpoint for c in follow} == {first.endpoint} and {c.affinity for c in follow} == {"hit"}
    assert router.choose(d, None, EPS, other, index).endpoint != first.endpoint  # a different prompt: elsewhere

    index.apply(first.endpoint, {"type": "stored", "hashes": shared[:2]})  # published: held, no longer expected
    assert index.cached_blocks(first.endpoint, shared) == 3  # the third block is still expected
    index.apply(first.endpoint, {"type": "removed", "hashes": shared})  # evicted: neither held nor expected
    assert index.cached_blocks(first.endpoint, shared) == 0

    index.expect(EPS[0], other)
    assert index.cached_blocks(EPS[0], other) == 2
    now[0] += kv.EXPECT_SECONDS + 1
    for e in EPS:
        index.touch(e)
    assert index.cached_blocks(EPS[0], other) == 0  # a request that never got computed stops attracting others


def test_kv_aware_keeps_a_second_request_on_the_replica_that_caches_its_context() -> None:
    """At a few requests in flight (1 + eps) x the average is below 2: the slack lets the replica holding a long
    context take a second request for it instead of sending it to an idle replica that must prefill it all; a hot
    context still spreads once its replica is past the bound plus the slack."""
    from infleet.gateway import kv

    index = kv.KVIndex()
    for e in EPS:
        index.touch(e)
    context = list(range(1, 65))  # 64 blocks (1,024 tokens at 16 per block)
    holder = EPS[1]
    index.apply(holder, {"type": "stored", "hashes": context})
    router, d = Router(eps=0.25), deployment(PREFIX_AFFINITY)
    router.acquire(holder)  # one request for it in flight, every other replica idle
    second = router.choose(d, None, EPS, [*context, 1000], index)
    assert (second.endpoint, second.affinity) == (holder, "hit")
    for _ in range(1 + LOAD_SLACK):  # the holder now runs more than ceil(1.25 x average) + the slack allows
        router.acquire(holder)
    spilled = router.choose(d, None, EPS, [*context, 1001], index)
    assert spilled.endpoint != holder and spilled.affinity == "miss"


def test_kv_aware_spreads_new_long_contexts_that_share_only_a_short_system_prompt() -> None:
    """A replica holding only a prompt's short system prompt does not attract it: new long contexts spread over the
    replicas by load (ties rotate) instead of piling up where the system prompt was first seen."""
    from infleet.gateway import kv

    index = kv.KVIndex()
    for e in EPS:
        index.touch(e)
    router, d = Router(eps=0.25), deployment(PREFIX_AFFINITY)
    system = [1, 2, 3, 4]  # 4 blocks every prompt starts with
    placed = []
    for c in range(len(EPS)):
        context = [*system, *range(100 * (c + 1), 100 * (c + 1) + 60)]  # 64 blocks, 4 of them shared
        choice = router.choose(d, None, EPS, context, index)
        assert choice.affinity == "miss"
        index.apply(choice.endpoint, {"type": "stored", "hashes": context})
        placed.append(choice.endpoint)
    assert sorted(placed) == sorted(EPS)  # one new context per replica
    # a prompt most of whose blocks one replica holds goes there
    again = router.choose(d, None, EPS, [*system, *range(300, 360), 9999], index)
    assert (again.endpoint, again.affinity) == (placed[2], "hit")
