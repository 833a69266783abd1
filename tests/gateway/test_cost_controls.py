"""The response cache and per-team budgets, in front of a real runtime process serving SmolLM2, driven by the
official `openai` client.

One replica serves two InferenceDeployments' worth of catalog entries (`team-a/smollm2` and `team-b/smollm2`, the
same served name in two namespaces), so namespaces, API keys and teams are all exercised on one model load.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from infleet.gateway.app import Gateway
from infleet.gateway.auth import KeyStore
from infleet.gateway.cache import CACHE_HEADER, CacheSettings
from infleet.gateway.teams import Teams

from .conftest import ServerThread, serve_gateway

pytestmark = [pytest.mark.model, pytest.mark.slow]

SERVED = "smollm2"
PRICE = 250.0  # $ per 1M tokens, as an operator's status.costPerMillionTokens would say
KEYS = {"key-a": "*", "key-b": "*", "key-rate": "*", "key-budget": "*"}
TEAMS = {
    "teams": {
        "alpha": {"apiKeys": ["key-a"], "namespaces": ["team-a"]},
        "beta": {"apiKeys": ["key-b"]},
        "limited": {"apiKeys": ["key-rate"], "outputTokensPerMinute": 10},
        "frugal": {"apiKeys": ["key-budget"], "monthlyBudgetDollars": 0.002},
    }
}
CHAT = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def replica() -> Iterator[Any]:
    from infleet.runtime.loader.smollm2 import smollm2_gguf
    from infleet.runtime.server.launch import ServerProcess

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    server = ServerProcess(smollm2_gguf(), "--served-name", SERVED, "--max-model-len", "512").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def gateway(replica: Any) -> Iterator[tuple[Gateway, ServerThread]]:
    keys = KeyStore(enabled=True)
    keys.set_source("test", KEYS)
    gw = Gateway(keys=keys, teams=Teams.parse(TEAMS))
    cache = CacheSettings(ttl=600, max_entries=100, max_bytes=1 << 20)
    for ns in ("team-a", "team-b"):
        gw.catalog.set_deployment(ns, SERVED, SERVED, cache=cache, price=PRICE)
        gw.catalog.set_slice(ns, SERVED, "static", [replica_endpoint(replica)])
    with serve_gateway(gw) as server:
        yield gw, server


def replica_endpoint(replica: Any) -> Any:
    from infleet.gateway.catalog import Endpoint

    return Endpoint("127.0.0.1", replica.port)


def client(server: ServerThread, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=300)


def series(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match[1] for k, v in labels.items()):
            total += float(match[2])
    return total


def runtime_tokens(replica: Any) -> tuple[float, float]:
    text = httpx.get(f"{replica.url}/metrics", timeout=10).text
    return series(text, "infleet_prompt_tokens_total"), series(text, "infleet_generation_tokens_total")


def gateway_metrics(server: ServerThread) -> str:
    return httpx.get(f"{server.url}/metrics", timeout=10).text


def test_a_cache_hit_returns_the_same_bytes_without_reaching_the_replica(
    replica: Any, gateway: tuple[Gateway, ServerThread]
) -> None:
    _, server = gateway
    c = client(server, "key-a")
    before = runtime_tokens(replica)
    first = c.chat.completions.with_raw_response.create(
        model="team-a/smollm2", messages=CHAT, max_tokens=8, temperature=0
    )
    after_first = runtime_tokens(replica)
    second = c.chat.completions.with_raw_response.create(
        model="team-a/smollm2", messages=CHAT, max_tokens=8, temperature=0
    )
    assert first.headers[CACHE_HEADER] == "miss" and second.headers[CACHE_HEADER] == "hit"
    assert second.http_response.content == first.http_response.content
    assert "Paris" in (second.parse().choices[0].message.content or "")
    assert after_first[1] > before[1]  # the first one was generated...
    assert runtime_tokens(replica) == after_first  # ...the second was not
    text = gateway_metrics(server)
    labels = {"namespace": "team-a", "deployment": SERVED}
    assert series(text, "infleet_gateway_response_cache_lookups_total", **labels, result="hit") == 1
    assert series(text, "infleet_gateway_response_cache_lookups_total", **labels, result="miss") == 1
    # a hit costs nothing: only the first answer's tokens are charged
    usage = first.parse().usage
    assert usage is not None
    assert series(text, "infleet_gateway_team_tokens_total", team="alpha", kind="output") == usage.completion_tokens


def test_a_seeded_request_is_cached_and_a_sampled_or_streamed_one_never(
    replica: Any, gateway: tuple[Gateway, ServerThread]
) -> None:
    _, server = gateway
    c = client(server, "key-a")
    seeded = [
        c.completions.with_raw_response.create(
            model="team-a/smollm2", prompt="Once upon a time", max_tokens=6, temperature=0.9, seed=7
        )
        for _ in range(2)
    ]
    assert [r.headers[CACHE_HEADER] for r in seeded] == ["miss", "hit"]
    before = runtime_tokens(replica)
    for _ in range(2):
        sampled = c.completions.with_raw_response.create(
            model="team-a/smollm2", prompt="Once upon a time", max_tokens=6, temperature=0.9
        )
        assert CACHE_HEADER not in sampled.headers
        default_temperature = c.completions.with_raw_response.create(
            model="team-a/smollm2", prompt="Once upon a time", max_tokens=6
        )
        assert CACHE_HEADER not in default_temperature.headers
        with c.chat.completions.with_streaming_response.create(
            model="team-a/smollm2", messages=CHAT, max_tokens=6, temperature=0, stream=True
        ) as streamed:
            assert CACHE_HEADER not in streamed.headers
            assert list(streamed.iter_lines())
    after = runtime_tokens(replica)
    assert after[0] - before[0] > 0 and after[1] - before[1] >= 6 * 2 * 2  # every one of them was generated
    text = gateway_metrics(server)
    lookups = series(text, "infleet_gateway_response_cache_lookups_total", namespace="team-a")
    assert lookups == 2  # only the seeded pair was looked up


def test_tenants_never_share_an_entry(replica: Any, gateway: tuple[Gateway, ServerThread]) -> None:
    _, server = gateway
    ask: dict[str, Any] = {"messages": CHAT, "max_tokens": 5, "temperature": 0}
    a1 = client(server, "key-a").chat.completions.with_raw_response.create(model="team-b/smollm2", **ask)
    b1 = client(server, "key-b").chat.completions.with_raw_response.create(model="team-b/smollm2", **ask)
    a2 = client(server, "key-a").chat.completions.with_raw_response.create(model="team-b/smollm2", **ask)
    # another namespace's deployment of the same model is another entry too
    a_other = client(server, "key-a").chat.completions.with_raw_response.create(model="team-a/smollm2", **ask)
    assert [r.headers[CACHE_HEADER] for r in (a1, b1, a2, a_other)] == ["miss", "miss", "hit", "miss"]
    assert b1.parse().id != a1.parse().id  # b's answer was generated for b
    assert a2.http_response.content == a1.http_response.content


def test_a_team_over_its_token_rate_gets_429_with_retry_after_and_others_are_unaffected(
    gateway: tuple[Gateway, ServerThread],
) -> None:
    _, server = gateway
    limited, other = client(server, "key-rate"), client(server, "key-b")
    ask: dict[str, Any] = {"prompt": "Once upon a time", "max_tokens": 16, "extra_body": {"ignore_eos": True}}
    first = limited.completions.create(model="team-a/smollm2", **ask)
    assert first.usage is not None and first.usage.completion_tokens == 16  # 16 > the 10 per minute allowed
    with pytest.raises(openai.RateLimitError) as refused:
        limited.completions.create(model="team-a/smollm2", **ask)
    response = refused.value.response
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= 60  # 7 tokens of debt at 10 a minute: 42 s
    error = response.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert "'limited'" in error["message"] and "10 output tokens per minute" in error["message"]
    assert other.completions.create(model="team-a/smollm2", **ask).choices[0].text  # another team goes on
    text = gateway_metrics(server)
    assert series(text, "infleet_gateway_team_refused_requests_total", team="limited", reason="output_tokens") == 1
    assert series(text, "infleet_gateway_team_refused_requests_total", team="beta") == 0


def test_a_team_past_its_monthly_budget_is_refused_until_next_month(gateway: tuple[Gateway, ServerThread]) -> None:
    _, server = gateway
    frugal = client(server, "key-budget")
    ask: dict[str, Any] = {"prompt": "Once upon a time", "max_tokens": 8}
    spent = 0.0
    while spent < 0.002:  # each answer costs (prompt + completion) x $250 / 1M, about $0.003
        usage = frugal.completions.create(model="team-a/smollm2", **ask).usage
        assert usage is not None
        spent += usage.total_tokens * PRICE / 1e6
    with pytest.raises(openai.RateLimitError) as refused:
        frugal.completions.create(model="team-a/smollm2", **ask)
    error = refused.value.response.json()["error"]
    assert error["code"] == "insufficient_quota" and "monthly budget of $0.002" in error["message"]
    assert int(refused.value.response.headers["retry-after"]) > 0
    text = gateway_metrics(server)
    assert series(text, "infleet_gateway_team_month_spend_dollars", team="frugal") == pytest.approx(spent)
    assert series(text, "infleet_gateway_team_monthly_budget_dollars", team="frugal") == 0.002


def test_spend_counters_equal_the_usage_returned_to_clients(
    replica: Any, gateway: tuple[Gateway, ServerThread]
) -> None:
    _, server = gateway
    c = client(server, "key-b")
    prompt = completion = 0
    for i in range(2):  # plain answers
        usage = c.chat.completions.create(
            model="team-b/smollm2", messages=[{"role": "user", "content": f"Say hello {i}"}], max_tokens=6 + i
        ).usage
        assert usage is not None
        prompt, completion = prompt + usage.prompt_tokens, completion + usage.completion_tokens
    reported = [
        chunk.usage
        for chunk in c.completions.create(
            model="team-b/smollm2",
            prompt="The sea",
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
        if chunk.usage is not None
    ]
    assert len(reported) == 1
    prompt, completion = prompt + reported[0].prompt_tokens, completion + reported[0].completion_tokens
    text = gateway_metrics(server)
    tokens = "infleet_gateway_team_tokens_total"
    assert series(text, tokens, team="beta", kind="input") == prompt
    assert series(text, tokens, team="beta", kind="output") == completion
    dollars = series(text, "infleet_gateway_team_spend_dollars_total", team="beta", model=SERVED)
    assert dollars == pytest.approx((prompt + completion) * PRICE / 1e6)

    # a stream that did not ask for usage: metered all the same (the replica's own counters say how much), and the
    # client sees no usage it did not ask for
    before_runtime, before_gateway = runtime_tokens(replica), series(text, tokens, team="beta")
    chunks = list(
        c.chat.completions.create(model="team-b/smollm2", messages=CHAT, max_tokens=7, temperature=0, stream=True)
    )
    assert chunks and all(chunk.usage is None and chunk.choices for chunk in chunks)
    after_runtime = runtime_tokens(replica)
    metered = series(gateway_metrics(server), tokens, team="beta") - before_gateway
    assert metered == sum(after_runtime) - sum(before_runtime) > 0
