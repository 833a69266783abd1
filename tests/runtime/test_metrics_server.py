"""`/metrics` on a real server: after a known workload the counters equal the tokens actually served."""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.model

LABELS = {"model_name": "smollm2", "tier": "bf16"}


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def get(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted({**LABELS, **labels}.items())))]


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    return get(after, name, **labels) - get(before, name, **labels)


def test_counters_equal_the_usage_served(runtime_server) -> None:
    url = runtime_server.url
    before = scrape(url)
    usages: list[tuple[int, int]] = []
    reasons: list[str] = []
    with httpx.Client(base_url=url, timeout=120) as client:
        for max_tokens in (3, 7):
            body = {"prompt": "Count to ten: one, two,", "max_tokens": max_tokens, "ignore_eos": True}
            r = client.post("/v1/completions", json=body).json()
            usages.append((r["usage"]["prompt_tokens"], r["usage"]["completion_tokens"]))
            reasons.append(r["choices"][0]["finish_reason"])
        chat = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 12, "temperature": 0}
        r = client.post("/v1/chat/completions", json=chat).json()
        usages.append((r["usage"]["prompt_tokens"], r["usage"]["completion_tokens"]))
        reasons.append(r["choices"][0]["finish_reason"])
        stream = {**chat, "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 5}
        with client.stream("POST", "/v1/chat/completions", json=stream) as s:
            events = [line for line in s.iter_lines() if line.startswith("data: {")]
        last = httpx.Response(200, content=events[-1][6:]).json()
        usages.append((last["usage"]["prompt_tokens"], last["usage"]["completion_tokens"]))
        reasons.append(httpx.Response(200, content=events[-2][6:]).json()["choices"][0]["finish_reason"])
    after = scrape(url)

    assert delta(before, after, "infleet_prompt_tokens_total") == sum(p for p, _ in usages)
    assert delta(before, after, "infleet_generation_tokens_total") == sum(c for _, c in usages)
    n = len(usages)
    for histogram in ("time_to_first_token", "e2e_request_latency", "request_queue_time"):
        assert delta(before, after, f"infleet_{histogram}_seconds_count") == n
    assert delta(before, after, "infleet_inter_token_latency_seconds_count") == sum(c - 1 for _, c in usages)
    assert delta(before, after, "infleet_e2e_request_latency_seconds_sum") > 0
    for reason in ("stop", "length"):
        assert delta(before, after, "infleet_request_success_total", finish_reason=reason) == reasons.count(reason)


def test_repeated_prompt_hits_the_prefix_cache(runtime_server) -> None:
    prompt = "Here is a long shared system preamble that many requests repeat word for word. " * 4
    before = scrape(runtime_server.url)
    for _ in range(2):
        r = httpx.post(f"{runtime_server.url}/v1/completions", json={"prompt": prompt, "max_tokens": 1}, timeout=120)
        assert r.status_code == 200
    after = scrape(runtime_server.url)
    assert delta(before, after, "infleet_prefix_cache_queries_total") > 0
    assert delta(before, after, "infleet_prefix_cache_hits_total") >= 16  # at least one full block of the repeat


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "non-streaming"])
def test_client_disconnect_aborts_the_request(runtime_server, stream: bool) -> None:
    url = runtime_server.url
    before = scrape(url)
    body = {"prompt": "Tell me a very long story.", "max_tokens": 900, "ignore_eos": True, "stream": stream}
    if stream:
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as r:
            for i, _ in enumerate(r.iter_lines()):
                if i >= 4:
                    break  # leave mid-stream: the connection closes here
    else:
        with pytest.raises(httpx.ReadTimeout):  # give up waiting: the connection closes
            httpx.post(f"{url}/v1/completions", json=body, timeout=httpx.Timeout(120, read=3))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        after = scrape(url)
        if delta(before, after, "infleet_request_success_total", finish_reason="abort") == 1:
            break
        time.sleep(0.2)
    assert delta(before, after, "infleet_request_success_total", finish_reason="abort") == 1
    assert delta(before, after, "infleet_generation_tokens_total") < 900  # stopped well before its budget
    assert get(after, "infleet_num_requests_running") == 0
