"""Cascades: the escalation signal, the offline replay behind `infleet cascade calibrate`, and the gateway asking
each model in turn over real HTTP (canned replicas whose answers carry chosen logprobs), whole and streamed to the
official `openai` client."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from infleet.api import sse
from infleet.gateway import calibrate, cascade
from infleet.gateway.app import Gateway
from infleet.gateway.cascade import Rule

from .conftest import ServerThread, serve_gateway

CHAT = cascade.CHAT


def chat_answer(text: str, logprobs: list[float], model: str = "m") -> dict[str, Any]:
    content = [{"token": "x", "logprob": v, "bytes": None, "top_logprobs": []} for v in logprobs]
    return {
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": {"content": content}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": len(logprobs), "total_tokens": 10 + len(logprobs)},
    }


def test_the_signal_escalates_an_unsure_or_invalid_answer() -> None:
    rule = Rule("auto", ("big",), min_mean_logprob=-1.0, min_first_token_logprob=-3.0)
    assert cascade.why_escalate(rule, CHAT, chat_answer("Paris", [-0.1, -0.5])) is None
    assert cascade.why_escalate(rule, CHAT, chat_answer("Paris", [-0.1, -2.5])) == "mean_logprob"
    assert cascade.why_escalate(rule, CHAT, chat_answer("Paris", [-4.0, 0.0, 0.0, 0.0])) == "first_token_logprob"
    assert cascade.why_escalate(rule, CHAT, chat_answer("Paris", [])) == "no_logprobs"
    completion = {"choices": [{"text": "42", "logprobs": {"token_logprobs": [-0.2, None, -0.4]}}]}
    assert cascade.why_escalate(rule, cascade.COMPLETIONS, completion) is None
    schema = json.dumps({"type": "object", "required": ["city"]})
    strict = Rule("auto", ("big",), regex=r"\{.*\}", json_schema=schema)
    assert cascade.why_escalate(strict, CHAT, chat_answer('{"city": "Paris"}', [])) is None
    assert cascade.why_escalate(strict, CHAT, chat_answer("Paris", [])) == "regex"
    assert cascade.why_escalate(strict, CHAT, chat_answer('{"town": "Paris"}', [])) == "json_schema"


def test_a_rule_comes_from_the_spec_or_not_at_all() -> None:
    spec = {
        "name": "auto",
        "escalateTo": ["big"],
        "minMeanLogprob": -1,
        "validator": {"jsonSchema": {"type": "object"}},
    }
    rule = Rule.from_spec(spec)
    assert rule is not None and rule.escalate_to == ("big",) and rule.min_mean_logprob == -1.0
    assert json.loads(rule.json_schema or "") == {"type": "object"}
    assert Rule.from_spec({"name": "auto"}) is None and Rule.from_spec(None) is None
    assert Rule.from_spec({**spec, "validator": {"regex": "("}}) is None  # cannot compile: ignored, with a log line


def test_logprobs_the_gateway_added_are_hidden_from_the_client() -> None:
    asked = cascade.ask_for_logprobs(CHAT, {"model": "auto"})
    assert asked["logprobs"] is True
    answer = chat_answer("Paris", [-0.1])
    assert cascade.hide_logprobs(CHAT, {"model": "auto"}, answer)["choices"][0]["logprobs"] is None
    assert cascade.hide_logprobs(CHAT, {"model": "auto", "logprobs": True}, answer) == answer
    assert cascade.ask_for_logprobs(cascade.COMPLETIONS, {"logprobs": 3})["logprobs"] == 3


def answers(*rows: tuple[tuple[bool, float], ...]) -> list[list[calibrate.Answer]]:
    return [[calibrate.Answer(right, 100, mean, mean) for right, mean in row] for row in rows]


def test_the_replay_prices_every_model_asked_and_picks_the_cheapest_threshold_at_the_quality() -> None:
    # small is sure and right on two samples, unsure and wrong on two; big is right on all four at 10x the price
    sample = answers(
        ((True, -0.1), (True, -0.2)),
        ((True, -0.3), (True, -0.2)),
        ((False, -2.0), (True, -0.1)),
        ((False, -1.5), (True, -0.3)),
    )
    prices = [1.0, 10.0]
    never = calibrate.replay(sample, prices, "mean", None)
    assert never.accuracy == 0.5 and never.escalation_rate == 0 and math.isclose(never.relative_cost, 0.1)
    at = calibrate.replay(sample, prices, "mean", -1.0)  # the two unsure answers escalate
    assert at.accuracy == 1.0 and at.escalation_rate == 0.5
    assert math.isclose(at.dollars_per_request, (4 * 100 * 1.0 + 2 * 100 * 10.0) / 4 / 1e6)
    assert math.isclose(at.relative_cost, 0.6)
    points = calibrate.curve(sample, prices, "mean")
    assert points[0].threshold is None and points[-1].threshold == 0.0 and points[-1].escalation_rate == 1.0
    chosen = calibrate.choose(points, target=1.0)
    assert chosen.accuracy == 1.0 and chosen.relative_cost == pytest.approx(0.6)
    assert chosen.threshold is not None and -2.0 < chosen.threshold <= -0.3
    assert calibrate.choose(points, target=0.5).threshold is None  # half right is what small alone gets, cheapest


def test_calibrate_refuses_bad_input_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sample = tmp_path / "s.jsonl"
    sample.write_text('{"prompt": "2+2=", "expected": "4"}\n{"prompt": "no answer"}\n')
    base = ["calibrate", "--url", "http://127.0.0.1:9/v1", "--models", "a", "b", "--sample", str(sample)]
    assert calibrate.main(base) == 2 and "--price is missing for a, b" in capsys.readouterr().err
    assert calibrate.main([*base, "--price", "a=1", "--price", "b=2"]) == 2
    assert "s.jsonl:2: each line needs `expected`" in capsys.readouterr().err
    assert calibrate.main([*base[:4], "a", "--sample", str(sample)]) == 2


class Replicas:
    """Two canned replicas, `small` (answers with the logprobs it is given) and `big`, recording what they get."""

    def __init__(self, small_logprobs: list[float]) -> None:
        self.small_logprobs = small_logprobs
        self.asked: list[tuple[str, dict[str, Any]]] = []

    def app(self, name: str) -> Starlette:
        async def answer(request: Request) -> Response:
            body = await request.json()
            self.asked.append((name, body))
            logprobs = self.small_logprobs if name == "small" else [-0.01]
            whole = chat_answer(f"from {name}", logprobs, model=body["model"])
            if body.get("stream"):  # token by token, as a runtime streams
                head = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": body["model"]}
                deltas = [{"role": "assistant", "content": ""}, {"content": "from "}, {"content": name}, {}]
                events = [
                    sse.event(
                        {**head, "choices": [{"index": 0, "delta": d, "finish_reason": "stop" if not d else None}]}
                    )
                    for d in deltas
                ]
                if (body.get("stream_options") or {}).get("include_usage"):
                    events.append(sse.event({**head, "choices": [], "usage": whole["usage"]}))
                return Response(b"".join(events) + sse.DONE, media_type=sse.MEDIA_TYPE)
            return JSONResponse(whole)

        return Starlette(routes=[Route("/{p:path}", answer, methods=["POST"])])


@pytest.fixture
def replicas() -> Iterator[tuple[Gateway, ServerThread, Replicas]]:
    canned = Replicas([-0.2, -0.3])
    with ServerThread(canned.app("small")) as small, ServerThread(canned.app("big")) as big:
        gateway = Gateway()
        rule = Rule("auto", ("big",), min_mean_logprob=-1.0)
        gateway.catalog.set_deployment("team-a", "small", "small", cascade=rule, price=1.0)
        gateway.catalog.set_deployment("team-a", "big", "big", price=10.0)
        gateway.catalog.set_slice("team-a", "small", "s", (small.endpoint,))
        gateway.catalog.set_slice("team-a", "big", "s", (big.endpoint,))
        with serve_gateway(gateway) as gw:
            yield gateway, gw, canned


def metric(gw: ServerThread, name: str, **labels: str) -> float:
    families = text_string_to_metric_families(httpx.get(f"{gw.url}/metrics").text)
    return sum(
        s.value
        for f in families
        for s in f.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_the_gateway_answers_from_the_first_sure_model_and_says_which(
    replicas: tuple[Gateway, ServerThread, Replicas],
) -> None:
    _gateway, gw, canned = replicas
    request = {"model": "auto", "messages": [{"role": "user", "content": "capital of France?"}], "max_tokens": 4}
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=request)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "from small"
    assert r.headers[cascade.MODEL_HEADER] == "small" and r.headers[cascade.ESCALATIONS_HEADER] == "0"
    assert r.json()["choices"][0]["logprobs"] is None  # asked by the gateway, not by the client
    assert canned.asked == [("small", {**request, "model": "small", "logprobs": True})]
    canned.small_logprobs = [-0.2, -3.0]  # unsure: mean -1.6
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=request)
    assert r.json()["choices"][0]["message"]["content"] == "from big" and r.headers[cascade.MODEL_HEADER] == "big"
    assert r.headers[cascade.ESCALATIONS_HEADER] == "1"
    assert canned.asked[-1] == ("big", {**request, "model": "big"})
    labels = {"namespace": "team-a", "cascade": "auto"}
    assert metric(gw, "infleet_gateway_cascade_requests_total", **labels, model="small") == 1
    assert metric(gw, "infleet_gateway_cascade_requests_total", **labels, model="big") == 1
    assert metric(gw, "infleet_gateway_cascade_escalations_total", **labels, model="small", reason="mean_logprob") == 1
    # the escalated request paid for both: 12 tokens at $1/1M, then 11 at $10/1M
    assert metric(gw, "infleet_gateway_cascade_cost_dollars_total", **labels, model="big") == pytest.approx(122e-6)
    assert metric(gw, "infleet_gateway_cascade_cost_dollars_total", **labels, model="small") == pytest.approx(12e-6)
    models = {m["id"] for m in httpx.get(f"{gw.url}/v1/models").json()["data"]}
    assert {"auto", "small", "big"} <= models


def test_a_cascade_refuses_what_it_cannot_do_with_the_reason(replicas: tuple[Gateway, ServerThread, Replicas]) -> None:
    gateway, gw, _ = replicas
    chat = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(f"{gw.url}/tokenize", json={"model": "auto", "prompt": "hi"})
    assert r.status_code == 400 and "answers /v1/chat/completions and /v1/completions only" in r.text

    async def failing(request: Request) -> JSONResponse:
        return JSONResponse({"error": {"message": "out of memory", "type": "server_error"}}, status_code=500)

    with ServerThread(Starlette(routes=[Route("/{p:path}", failing, methods=["POST"])])) as broken:
        gateway.catalog.set_slice("team-a", "small", "s", (broken.endpoint,))  # the first model fails: the next answers
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=chat)
    assert r.status_code == 200 and r.headers[cascade.MODEL_HEADER] == "big"
    labels = {"namespace": "team-a", "cascade": "auto", "model": "small", "reason": "error"}
    assert metric(gw, "infleet_gateway_cascade_escalations_total", **labels) == 1
    gateway.catalog.remove_deployment("team-a", "big")
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=chat)
    assert r.status_code == 503 and "escalates to 'big', which is not served" in r.json()["error"]["message"]


def streamed(gw: ServerThread, **options: Any) -> tuple[dict[str, str], str, list[Any]]:
    """A streamed chat to the cascade through the `openai` client: the headers, the text and the chunks."""
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "capital of France?"}], stream=True, **options
    )
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return dict(raw.headers), text, chunks


def test_a_streamed_request_gets_a_kept_answer_as_events_and_an_escalated_one_streamed(
    replicas: tuple[Gateway, ServerThread, Replicas],
) -> None:
    _gateway, gw, canned = replicas
    headers, text, chunks = streamed(gw, stream_options={"include_usage": True})
    assert (text, headers[cascade.MODEL_HEADER], headers[cascade.ESCALATIONS_HEADER]) == ("from small", "small", "0")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 2  # the usage the client asked for
    assert len(chunks) == 2 and chunks[0].choices[0].logprobs is None  # one burst; the gateway's logprobs hidden
    assert "stream" not in canned.asked[-1][1] and canned.asked[-1][1]["logprobs"] is True  # the signal needs it whole

    canned.small_logprobs = [-0.2, -3.0]  # unsure: the last model streams
    headers, text, chunks = streamed(gw)
    assert (text, headers[cascade.MODEL_HEADER], headers[cascade.ESCALATIONS_HEADER]) == ("from big", "big", "1")
    assert len(chunks) == 4 and all(c.choices for c in chunks)  # token by token, without the usage it did not ask for
    assert canned.asked[-1] == (
        "big",
        {"model": "big", "messages": [{"role": "user", "content": "capital of France?"}], "stream": True}
        | {"stream_options": {"include_usage": True}},  # asked by the gateway, for the cost
    )
    labels = {"namespace": "team-a", "cascade": "auto"}
    assert metric(gw, "infleet_gateway_cascade_requests_total", **labels, model="big") == 1
    # both models paid for: 12 tokens at $1/1M, then 11 at $10/1M read from the stream's usage chunk
    assert metric(gw, "infleet_gateway_cascade_cost_dollars_total", **labels, model="big") == pytest.approx(122e-6)
