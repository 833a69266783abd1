"""Each request judged against its own deployment's thresholds: two deployments behind one replica, the same
requests, different SLOs, different verdicts; non-streamed answers count for e2e only, failures are bad."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest

from infleet.api import sse
from infleet.api.durations import seconds_or_none
from infleet.cluster.testing import wait_for
from infleet.gateway.app import Gateway
from infleet.gateway.discovery import deployment_from
from infleet.gateway.metrics import GatewayMetrics
from infleet.gateway.slo import RequestClock, Thresholds

from .conftest import ServerThread, Upstream, serve_gateway

STRICT = Thresholds(ttft=2.0, tpot=0.1, e2e=10.0)  # team-a/strict: TPOT 100 ms
LOOSE = Thresholds(ttft=2.0, tpot=2.0)  # team-b/loose: TPOT 2 s, no e2e objective
PAUSE = 0.4  # seconds between the first and second streamed event: slower than 100 ms, faster than 2 s


def count(metrics: GatewayMetrics, ns: str, dep: str, sli: str, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "infleet_gateway_slo_requests_total", {"namespace": ns, "deployment": dep, "sli": sli, "result": result}
    )
    return 0.0 if value is None else value


@pytest.fixture
def gateway(upstream: tuple[Upstream, ServerThread]) -> Iterator[tuple[Gateway, ServerThread, Upstream]]:
    up, replica = upstream
    gw = Gateway()
    for ns, dep, slo in (("team-a", "strict", STRICT), ("team-b", "loose", LOOSE)):
        gw.catalog.set_deployment(ns, dep, dep, slo=slo)
        gw.catalog.set_slice(ns, dep, "s", (replica.endpoint,))
    with serve_gateway(gw) as server:
        yield gw, server, up


def stream(url: str, model: str, up: Upstream, content: str = "hi") -> list[str]:
    up.go.clear()
    timer = threading.Timer(PAUSE, up.go.set)
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": content}]}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as r:
        timer.start()
        return [line for line in r.iter_lines() if line]


def test_the_same_requests_are_good_for_one_deployment_and_bad_for_the_other(gateway: tuple) -> None:
    gw, server, up = gateway
    for model in ("strict", "loose"):
        assert stream(server.url, model, up)[-1] == "data: [DONE]"
    m = gw.metrics
    wait_for(lambda: count(m, "team-b", "loose", "tpot", "good") == 1, timeout=5, interval=0.01, what="the count")
    assert count(m, "team-a", "strict", "tpot", "bad") == 1 and count(m, "team-a", "strict", "tpot", "good") == 0
    assert count(m, "team-a", "strict", "ttft", "good") == 1 and count(m, "team-a", "strict", "e2e", "good") == 1
    assert count(m, "team-b", "loose", "ttft", "good") == 1
    assert count(m, "team-b", "loose", "e2e", "good") + count(m, "team-b", "loose", "e2e", "bad") == 0  # no objective


def test_a_plain_answer_counts_for_e2e_only_and_a_broken_stream_is_bad(gateway: tuple) -> None:
    gw, server, up = gateway
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "strict", "messages": []}, timeout=30)
    assert r.status_code == 200
    m = gw.metrics
    assert count(m, "team-a", "strict", "e2e", "good") == 1
    assert sum(count(m, "team-a", "strict", s, r) for s in ("ttft", "tpot") for r in ("good", "bad")) == 0
    stream(server.url, "strict", up, content="die")
    wait_for(lambda: count(m, "team-a", "strict", "e2e", "bad") == 1, timeout=5, interval=0.01, what="the count")
    assert count(m, "team-a", "strict", "ttft", "bad") == 1 and count(m, "team-a", "strict", "tpot", "bad") == 1
    missing = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "nope", "messages": []})
    assert missing.status_code == 404  # a client error is not the deployment's fault, and names no deployment


def test_thresholds_come_from_the_spec() -> None:
    obj = {
        "metadata": {"namespace": "ns", "name": "d"},
        "spec": {"model": {"servedName": "m"}, "slo": {"ttftP99": "500ms", "tpotP99": "1m30s", "objectivePercent": 99}},
    }
    assert deployment_from(obj).slo == Thresholds(ttft=0.5, tpot=90.0, e2e=None)
    assert seconds_or_none("2s") == 2.0 and seconds_or_none("2 s") is None and seconds_or_none(None) is None


def test_tpot_is_the_mean_gap_after_the_first_event() -> None:
    clock = RequestClock(Thresholds(ttft=1.0, tpot=0.1, e2e=5.0), started=0.0)
    clock.first, clock.last, clock.events = 0.5, 0.5 + 9 * 0.05, 10
    verdict = clock.judge()
    assert verdict["ttft"] is True and verdict["tpot"] is True
    clock.last = 0.5 + 9 * 0.2
    assert clock.judge()["tpot"] is False
    assert clock.judge(failed=True) == {"ttft": False, "tpot": False, "e2e": False}
    assert sse.data_events(b'data: {"a": 1}\n\ndata: {"b": 2}\n\ndata: [DONE]\n\n') == 2


def test_a_scrape_before_any_request_shows_each_set_sli_at_zero(gateway: tuple) -> None:
    """PromQL's increase() ignores a new series' first sample, so the series exist at 0 before the first request."""
    gw, server, _ = gateway
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    for result in ("good", "bad"):
        for sli in ("ttft", "tpot"):
            assert count(gw.metrics, "team-b", "loose", sli, result) == 0
            assert (
                f'infleet_gateway_slo_requests_total{{deployment="loose",namespace="team-b",result="{result}",'
                f'sli="{sli}"}} 0.0' in text
            ), text
    assert 'deployment="loose",namespace="team-b",result="good",sli="e2e"' not in text  # no e2e objective: no series
