"""A team's token limit across gateway replicas (gateway/peers.py): each replica reads what the others charged and
takes it from its own buckets, so two replicas do not let a team use its limit twice. Real gateways over HTTP, the
official `openai` client, a canned replica that reports usage."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from infleet.cluster.testing import wait_for
from infleet.gateway import peers
from infleet.gateway.__main__ import main as gateway_main
from infleet.gateway.app import Gateway, build_app
from infleet.gateway.auth import KeyStore
from infleet.gateway.teams import Teams

from .conftest import ServerThread

TEAMS = {
    "teams": {
        "limited": {"apiKeys": ["key-rate"], "outputTokensPerMinute": 100},
        "other": {"apiKeys": ["key-other"], "outputTokensPerMinute": 100},
    }
}
OUTPUT_TOKENS = 60  # each answer's usage.completion_tokens


async def answer(request: Request) -> JSONResponse:
    body = await request.json()
    return JSONResponse(
        {
            "id": "c",
            "object": "chat.completion",
            "created": 1,
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": OUTPUT_TOKENS, "total_tokens": 5 + OUTPUT_TOKENS},
        }
    )


def gateway(replica: ServerThread) -> Gateway:
    keys = KeyStore(enabled=True)
    keys.set_source("test", {"key-rate": "*", "key-other": "*"})
    gw = Gateway(keys=keys, teams=Teams.parse(TEAMS))
    gw.catalog.set_deployment("ns", "m", "m", price=1.0)
    gw.catalog.set_slice("ns", "m", "static", [replica.endpoint])
    return gw


@pytest.fixture
def fleet() -> Iterator[tuple[ServerThread, ServerThread, ServerThread, Gateway]]:
    """Gateways a and b, peers of each other (a's list names a itself too, as a headless Service would), and c,
    which has no peers; all in front of one canned replica."""
    with ServerThread(Starlette(routes=[Route("/v1/chat/completions", answer, methods=["POST"])])) as replica:
        ga, gb, gc = gateway(replica), gateway(replica), gateway(replica)
        names_a: list[str] = []
        names_b: list[str] = []
        a = ServerThread(build_app(ga, on_start=peers.follow_peers(ga.budgets, names_a, ga.replica, every=0.05)))
        b = ServerThread(build_app(gb, on_start=peers.follow_peers(gb.budgets, names_b, gb.replica, every=0.05)))
        names_a += [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]
        names_b += [f"127.0.0.1:{a.port}"]
        with a, b, ServerThread(build_app(gc)) as c:
            yield a, b, c, gb


def chat(server: ServerThread, key: str) -> Any:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=30)
    return client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=4)


def peers_gauge(server: ServerThread) -> float:
    line = next(
        x for x in httpx.get(f"{server.url}/metrics").text.splitlines() if x.startswith("infleet_gateway_peers")
    )
    return float(line.split()[-1])


def test_a_team_over_its_limit_on_one_replica_is_refused_by_the_other(
    fleet: tuple[ServerThread, ServerThread, ServerThread, Gateway],
) -> None:
    a, b, c, _ = fleet
    wait_for(lambda: peers_gauge(a) == 1 and peers_gauge(b) == 1, timeout=10, what="each gateway reading the other")
    for _ in range(2):  # 120 output tokens through a: its bucket of 100 is 20 in debt
        assert chat(a, "key-rate").usage.completion_tokens == OUTPUT_TOKENS

    admitted_by_b = 0  # b may admit the team until its next read of a: then it counts those tokens too

    def refused_by_b() -> openai.RateLimitError | None:
        nonlocal admitted_by_b
        try:
            chat(b, "key-rate")
        except openai.RateLimitError as e:
            return e
        admitted_by_b += 1
        return None

    refused = wait_for(refused_by_b, timeout=10, interval=0.1, what="b refusing the team a served past its limit")
    assert "over its limit of 100 output tokens per minute" in refused.message
    # b took a's 120 tokens once, however many times it read a (beside its own): the bucket of 100 a minute holds a
    # token again when that debt plus one is refilled; counted twice, a's tokens would add 72 s
    debt = OUTPUT_TOKENS * (2 + admitted_by_b) - 100 + 1
    retry_after = int(refused.response.headers["retry-after"])
    assert debt * 0.6 - 2 <= retry_after <= math.ceil(debt * 0.6), (retry_after, admitted_by_b)
    assert chat(b, "key-other").usage.completion_tokens == OUTPUT_TOKENS  # the other team is not affected
    assert chat(c, "key-rate").usage.completion_tokens == OUTPUT_TOKENS  # without peers, a replica sees its own only
    own = {"other": [5, OUTPUT_TOKENS]} | (
        {"limited": [5 * admitted_by_b, OUTPUT_TOKENS * admitted_by_b]} if admitted_by_b else {}
    )
    assert httpx.get(f"{b.url}{peers.PATH}").json()["teams"] == own  # what b reports is its own charges only


def test_a_peer_first_seen_or_restarted_sets_a_baseline() -> None:
    state = peers.PeerTokens()
    assert state.gained("r1", {"t": (100, 1000)}, now=0.0) == {}  # its past is not this replica's business
    assert state.gained("r1", {"t": (110, 1000), "u": (1, 2)}, now=1.0) == {"t": (10, 0), "u": (1, 2)}
    assert state.gained("r1", {"t": (110, 1000), "u": (1, 2)}, now=2.0) == {}
    assert state.gained("r2", {"t": (5, 5)}, now=3.0) == {}  # a restarted peer answers with a new id
    state.forget(now=3.0 + peers.FORGET_AFTER + 1)
    assert list(state.seen) == []


def test_a_report_round_trips_and_anything_else_is_refused() -> None:
    assert peers.parse(peers.report("r", {"t": (1, 2)})) == ("r", {"t": (1, 2)})
    for bad in ([], {"replica": "r"}, {"replica": "r", "teams": {"t": [1]}}, {"replica": 1, "teams": {}}):
        with pytest.raises(ValueError):
            peers.parse(bad)


def test_peers_without_a_port_are_refused_at_start(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["run", "--upstream", "m=http://127.0.0.1:9", "--peers", "gateway-peers.infleet.svc"]
    assert gateway_main(argv) == 2
    assert "--peers 'gateway-peers.infleet.svc': expected NAME:PORT" in capsys.readouterr().err
