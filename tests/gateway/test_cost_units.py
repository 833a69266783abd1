"""The response cache's bounds and keys, the teams file, token buckets and months, without a model."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from infleet.gateway.budgets import Budgets, Refused, Usage, ask_for_usage, metered, seconds_to_next_month
from infleet.gateway.cache import CacheSettings, ResponseCache, cache_key, deterministic, tenant
from infleet.gateway.discovery import deployment_from
from infleet.gateway.teams import TeamError, Teams
from infleet.operator.api import InferenceDeploymentSpec


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_deterministic_means_greedy_or_seeded_and_not_streamed() -> None:
    assert deterministic({"temperature": 0})
    assert deterministic({"temperature": 0.0, "n": 2})
    assert deterministic({"temperature": 1.2, "seed": 3})
    assert not deterministic({})  # OpenAI's default temperature is 1
    assert not deterministic({"temperature": 0.7})
    assert not deterministic({"temperature": 0, "stream": True})
    assert not deterministic({"temperature": False, "seed": True})  # booleans are not numbers here
    assert not deterministic({"temperature": "0"})


def test_keys_scope_by_tenant_deployment_path_and_canonical_body() -> None:
    body = {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}
    same = json.loads(json.dumps(body, indent=3))  # other spacing, same JSON
    reordered = dict(reversed(list(body.items())))
    key = cache_key(tenant("Bearer a"), "ns", "dep", "/v1/chat/completions", body)
    assert key == cache_key(tenant("Bearer a"), "ns", "dep", "/v1/chat/completions", same)
    assert key == cache_key(tenant("Bearer a"), "ns", "dep", "/v1/chat/completions", reordered)
    for other in (
        cache_key(tenant("Bearer b"), "ns", "dep", "/v1/chat/completions", body),
        cache_key(tenant(None), "ns", "dep", "/v1/chat/completions", body),
        cache_key(tenant("Bearer a"), "ns2", "dep", "/v1/chat/completions", body),
        cache_key(tenant("Bearer a"), "ns", "dep", "/v1/completions", body),
        cache_key(tenant("Bearer a"), "ns", "dep", "/v1/chat/completions", {**body, "max_tokens": 3}),
    ):
        assert other != key


def test_entries_expire_and_the_least_recently_used_go_first() -> None:
    clock = Clock()
    cache = ResponseCache(CacheSettings(ttl=10, max_entries=2, max_bytes=10_000), clock)
    cache.put(b"a", 200, {"content-type": "application/json"}, b"A" * 10)
    cache.put(b"b", 200, {}, b"B" * 10)
    assert cache.get(b"a") is not None  # a is now the most recent
    cache.put(b"c", 200, {}, b"C" * 10)
    assert cache.get(b"b") is None and cache.get(b"a") is not None and len(cache) == 2
    clock.now += 10
    assert cache.get(b"a") is None and cache.get(b"c") is None and cache.size == 0


def test_the_byte_bound_holds() -> None:
    cache = ResponseCache(CacheSettings(ttl=10, max_entries=100, max_bytes=25))
    for key in (b"1", b"2", b"3"):
        assert cache.put(key, 200, {}, b"x" * 10)
    assert cache.size <= 25 and cache.get(b"1") is None and cache.get(b"3") is not None
    assert not cache.put(b"big", 200, {}, b"x" * 26)  # larger than the whole cache: not kept


def test_settings_come_from_the_spec_the_crd_validates() -> None:
    spec = InferenceDeploymentSpec.model_validate(
        {
            "model": {"uri": "file:///m.gguf"},
            "accelerator": {"type": "NVIDIA-L4"},
            "gateway": {"responseCache": {"enabled": True, "ttl": "90s", "maxEntries": 5}},
        }
    )
    wire = spec.model_dump(by_alias=True, mode="json")
    obj = {"metadata": {"namespace": "ns", "name": "d"}, "spec": wire, "status": {"costPerMillionTokens": 1.5}}
    d = deployment_from(obj)
    assert d.cache == CacheSettings(ttl=90, max_entries=5, max_bytes=64 * 1024 * 1024) and d.price == 1.5
    wire["gateway"]["responseCache"]["enabled"] = False
    assert deployment_from({**obj, "status": {}}).cache is None and deployment_from({**obj, "status": {}}).price is None
    with pytest.raises(ValidationError):
        InferenceDeploymentSpec.model_validate({**wire, "gateway": {"responseCache": {"ttl": "soon"}}})
    with pytest.raises(ValidationError):
        InferenceDeploymentSpec.model_validate({**wire, "gateway": {"responseCache": {"maxEntries": 0}}})


def test_teams_file_errors_say_where(tmp_path: Path) -> None:
    with pytest.raises(TeamError, match=r"teams\.web\.outputTokensPerMinute"):
        Teams.parse({"teams": {"web": {"outputTokensPerMinute": 0}}})
    with pytest.raises(TeamError, match="share an API key"):
        Teams.parse({"teams": {"a": {"apiKeys": ["k"]}, "b": {"apiKeys": ["k"]}}})
    with pytest.raises(TeamError, match="both claim namespace 'ns'"):
        Teams.parse({"teams": {"a": {"namespaces": ["ns"]}, "b": {"namespaces": ["ns"]}}})
    with pytest.raises(TeamError, match="budget"):
        Teams.parse({"teams": {"a": {"budget": 3}}})
    bad = tmp_path / "teams.yaml"
    bad.write_text("teams: [unclosed")
    with pytest.raises(TeamError, match=re.escape(str(bad))):
        Teams.load(bad)


def test_a_key_names_its_team_before_the_namespace() -> None:
    teams = Teams.parse({"teams": {"a": {"apiKeys": ["ka"], "namespaces": ["shared"]}, "b": {"apiKeys": ["kb"]}}})
    assert teams.team_for("Bearer kb", "shared").name == "b"  # type: ignore[union-attr]
    assert teams.team_for("Bearer nobody", "shared").name == "a"  # type: ignore[union-attr]
    assert teams.team_for(None, "elsewhere") is None
    assert "ka" not in repr(teams)


def test_token_limit_refuses_while_in_debt_and_says_when_to_come_back() -> None:
    clock = Clock()
    budgets = Budgets(CollectorRegistry(), Teams.parse({"teams": {"t": {"inputTokensPerMinute": 600}}}), clock)
    team = budgets.teams.teams["t"]
    budgets.admit(team)
    budgets.charge(team, "ns", "d", "m", None, Usage(900, 0))  # 300 tokens of debt at 10 a second
    with pytest.raises(Refused) as refused:
        budgets.admit(team)
    assert refused.value.retry_after == 31 and refused.value.reason == "input_tokens"  # (300 + 1) / 10 s
    clock.now += 31
    budgets.admit(team)


def test_monthly_budget_renews_with_the_month() -> None:
    now = [datetime(2026, 11, 30, 23, 0, tzinfo=UTC)]
    budgets = Budgets(
        CollectorRegistry(), Teams.parse({"teams": {"t": {"monthlyBudgetDollars": 1}}}), wall=lambda: now[0]
    )
    team = budgets.teams.teams["t"]
    budgets.charge(team, "ns", "d", "m", 1e6, Usage(1, 0))  # $1
    with pytest.raises(Refused) as refused:
        budgets.admit(team)
    assert refused.value.retry_after == 3600 and refused.value.code == "insufficient_quota"
    now[0] = datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC)
    budgets.admit(team)
    assert seconds_to_next_month(datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)) == 1


def test_a_stream_that_did_not_ask_for_usage_never_sees_it() -> None:
    payload: dict[str, object] = {"stream": True}
    assert ask_for_usage(payload) and payload["stream_options"] == {"include_usage": True}
    assert not ask_for_usage({"stream": True, "stream_options": {"include_usage": True}})
    events = [
        b'data: {"id":"x","choices":[{"delta":{"content":"Hi"}}],"usage":null}\n\n',
        b'data: {"id":"x","choices":[{"delta":{}}],"usage":null}\n\n'
        b'data: {"id":"x","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}\n\n',
        b"data: [DONE]\n\n",
    ]

    async def relay(hide: bool) -> tuple[bytes, list[Usage]]:
        async def upstream() -> AsyncIterator[bytes]:
            for e in events:
                yield e

        seen: list[Usage] = []
        out = b"".join([c async for c in metered(upstream(), hide, seen.append)])
        return out, seen

    hidden, seen = asyncio.run(relay(True))
    assert seen == [Usage(5, 2)] and b"usage" not in hidden and hidden.endswith(b"data: [DONE]\n\n")
    assert hidden.count(b"data: ") == 3  # two content chunks and [DONE]
    shown, seen = asyncio.run(relay(False))
    assert seen == [Usage(5, 2)] and shown == b"".join(events)
