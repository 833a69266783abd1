"""The proxy over real HTTP: model selection and errors, SSE pass-through without buffering, retries before the
first byte, clean mid-stream failures, and KServe v2 binary tensors byte-exact."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from infleet.cluster.testing import wait_for
from infleet.gateway.app import Gateway
from infleet.gateway.catalog import Adapter, Endpoint
from infleet.gateway.prompts import kserve_prompt, openai_prompt

from .conftest import ServerThread, Upstream, free_port, serve_gateway

Fleet = tuple[Gateway, ServerThread, Upstream]
CHAT = {"model": "m", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}


@pytest.fixture
def fleet(upstream: tuple[Upstream, ServerThread]) -> Iterator[Fleet]:
    up, replica = upstream
    gateway = Gateway()
    gateway.catalog.set_deployment("team-a", "d", "m")
    gateway.catalog.set_slice("team-a", "d", "s", (replica.endpoint,))
    with serve_gateway(gateway) as gw:
        yield gateway, gw, up


def test_unknown_model_is_404_listing_the_served_models(fleet: Fleet) -> None:
    gateway, gw, _ = fleet
    gateway.catalog.set_deployment("team-b", "other", "other-model")
    r = httpx.post(f"{gw.url}/v1/chat/completions", json={**CHAT, "model": "gpt-5"})
    assert r.status_code == 404
    error = r.json()["error"]
    assert error["code"] == "model_not_found" and error["type"] == "not_found_error"
    assert "'gpt-5'" in error["message"] and "'m'" in error["message"] and "'other-model'" in error["message"]
    v2 = httpx.post(f"{gw.url}/v2/models/gpt-5/infer", content=b"{}")
    assert v2.status_code == 404 and "served models" in v2.json()["error"]  # KServe's error shape
    for bad, status in ((b"not json", 400), (b"[1]", 400), (json.dumps({"messages": []}).encode(), 400)):
        r = httpx.post(f"{gw.url}/v1/chat/completions", content=bad, headers={"content-type": "application/json"})
        assert r.status_code == status and r.json()["error"]["message"]


def test_models_union_and_namespaced_names(fleet: Fleet) -> None:
    gateway, gw, up = fleet
    gateway.catalog.set_deployment("team-b", "d", "m")  # the same served name in a second namespace
    gateway.catalog.set_slice("team-b", "d", "s", gateway.catalog.get(("team-a", "d")).endpoints)
    ids = [m["id"] for m in httpx.get(f"{gw.url}/v1/models").json()["data"]]
    assert ids == ["team-a/m", "team-b/m"]
    ambiguous = httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT)
    assert ambiguous.status_code == 400 and "team-a/m" in ambiguous.json()["error"]["message"]
    r = httpx.post(f"{gw.url}/v1/chat/completions", json={**CHAT, "model": "team-b/m"})
    assert r.status_code == 200 and r.json()["model"] == "m"  # rewritten to the name the replica serves
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT, headers={"X-Infleet-Namespace": "team-a"})
    assert r.status_code == 200
    assert "x-infleet-namespace" not in up.seen[-1]["headers"]


def test_a_cookie_a_replica_sets_never_reaches_it_again_through_the_shared_client(
    upstream: tuple[Upstream, ServerThread],
) -> None:
    """The gateway's one upstream client serves every caller: a replica's Set-Cookie goes back to the caller who got
    it and is not kept. A host name, not an IP: aiohttp's default cookie jar keeps cookies from names."""
    up, replica = upstream
    gateway = Gateway()
    gateway.catalog.set_deployment("team-a", "d", "m")
    gateway.catalog.set_slice("team-a", "d", "s", (Endpoint("localhost", replica.endpoint.port),))
    with serve_gateway(gateway) as gw:
        first = httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT)
        assert first.status_code == 200 and first.cookies.get("replica") == "upstream"
        assert httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT).status_code == 200
    assert [r["headers"].get("cookie") for r in up.seen] == [None, None]


def test_sse_events_pass_through_before_the_upstream_finishes(fleet: Fleet) -> None:
    """The upstream sends event 1 and then blocks until the client has seen event 1 through the gateway: if the
    gateway buffered, the upstream would wait out its 30 s and report that nobody released it."""
    _, gw, up = fleet
    received = []
    with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json={**CHAT, "stream": True}, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line:
                received.append(line)
                if line == 'data: {"n": 1}':
                    up.go.set()
    assert received == ['data: {"n": 1}', 'data: {"n": 2}', "data: [DONE]"]
    assert up.released_by_client is True


def test_a_stream_that_breaks_ends_with_an_error_event_and_done(fleet: Fleet) -> None:
    gateway, gw, _ = fleet
    body = {**CHAT, "stream": True, "messages": [{"role": "user", "content": "die"}]}
    with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json=body, timeout=30) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[0] == 'data: {"n": 1}'
    error = json.loads(lines[1].removeprefix("data: "))
    assert "failed" in error["error"]["message"]
    assert lines[2:] == ["data: [DONE]"]
    # the failed stream releases its replica (clean-up runs just after the last byte went out)
    wait_for(lambda: gateway.router.outstanding.total() == 0, timeout=5, interval=0.01, what="the replica's release")


def test_a_refused_connection_is_retried_on_another_replica(fleet: Fleet) -> None:
    gateway, gw, up = fleet
    dead = Endpoint("127.0.0.1", free_port())  # nothing listens there
    live = gateway.catalog.get(("team-a", "d")).endpoints
    gateway.catalog.set_slice("team-a", "d", "s", (dead, *live))
    up.go.set()  # streams run to the end
    for i in range(6):
        r = httpx.post(f"{gw.url}/v1/chat/completions", json={**CHAT, "stream": i % 2 == 0})
        assert r.status_code == 200
        assert r.text.endswith("data: [DONE]\n\n") if i % 2 == 0 else r.json()["upstream"] == "upstream"
    retries = gateway.metrics.registry.get_sample_value(
        "infleet_gateway_retries_total", {"namespace": "team-a", "deployment": "d"}
    )
    assert retries is not None and retries >= 1
    # with only dead replicas left, the answer is a clear 502 after one retry
    gateway.catalog.set_slice("team-a", "d", "s", (dead, Endpoint("127.0.0.1", free_port())))
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT)
    assert r.status_code == 502 and "no replica" in r.json()["error"]["message"]


def test_the_openai_paths_answer_as_starlette_routed_them(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    """A POST to an OpenAI path skips Starlette's router and middleware (GatewayApp): other methods still get
    Starlette's 405, an unexpected failure its plain 500, and the per-deployment series count every request."""
    gateway, gw, _ = fleet
    for _ in range(3):
        assert httpx.post(f"{gw.url}/v1/chat/completions?x=1", json=CHAT).status_code == 200
    assert httpx.post(f"{gw.url}/v1/chat/completions", json={**CHAT, "model": "nope"}).status_code == 404
    wrong = httpx.get(f"{gw.url}/v1/chat/completions")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    sample = gateway.metrics.registry.get_sample_value
    assert sample("infleet_gateway_requests_total", {"namespace": "team-a", "deployment": "d", "code": "200"}) == 3
    assert sample("infleet_gateway_requests_total", {"namespace": "", "deployment": "", "code": "404"}) == 1
    assert sample("infleet_gateway_in_flight_requests", {"namespace": "team-a", "deployment": "d"}) == 0
    assert sample("infleet_gateway_ready_endpoints", {"namespace": "team-a", "deployment": "d"}) == 1
    labels = {"namespace": "team-a", "deployment": "d", "strategy": "leastOutstanding"}
    assert sample("infleet_gateway_routing_decisions_total", labels) == 3
    # a series appears once something counts in it, as before: no retries happened, no replica served no deployment
    assert sample("infleet_gateway_retries_total", {"namespace": "team-a", "deployment": "d"}) is None
    assert sample("infleet_gateway_in_flight_requests", {"namespace": "", "deployment": ""}) is None

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(gateway, "forward", broken)
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT)
    assert r.status_code == 500 and r.text == "Internal Server Error"


def test_kserve_binary_tensors_pass_through_byte_exact(fleet: Fleet) -> None:
    gateway, gw, up = fleet
    tensor = triton.InferInput("text_input", [1], "BYTES")
    tensor.set_data_from_numpy(np.array(["héllo wörld".encode()], dtype=object), binary_data=True)
    limit = triton.InferInput("max_tokens", [1], "INT32")
    limit.set_data_from_numpy(np.array([4], dtype=np.int32), binary_data=True)
    body, header_length = triton.InferenceServerClient.generate_request_body([limit, tensor])
    assert kserve_prompt(body, header_length) == "héllo wörld"
    headers = {"Inference-Header-Content-Length": str(header_length), "Content-Type": "application/octet-stream"}
    r = httpx.post(f"{gw.url}/v2/models/team-a%2Fm/versions/1/infer", content=body, headers=headers)
    assert r.status_code == 200
    assert up.seen[-1]["body"] == body  # byte-exact to the replica
    assert up.seen[-1]["headers"]["inference-header-content-length"] == str(header_length)
    assert r.headers["x-upstream-path"] == "/v2/models/m/versions/1/infer"
    assert r.content == body and r.headers["inference-header-content-length"] == str(header_length)
    # readiness of a deployment without replicas is answered, not held
    gateway.catalog.set_deployment("team-a", "idle", "idle-model")
    assert httpx.get(f"{gw.url}/v2/models/idle-model/ready").status_code == 503
    assert httpx.get(f"{gw.url}/v2").json()["extensions"] == ["binary_tensor_data", "generate"]


def test_prompt_prefixes() -> None:
    assert openai_prompt(CHAT) == "system\nbe brief\nuser\nhi\n"
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}]}]}
    assert openai_prompt(parts) == "user\na\n"
    assert openai_prompt({"prompt": "once"}) == "once"
    assert openai_prompt({"prompt": ["first", "second"]}) == "first"
    assert openai_prompt({"prompt": [1, 2, 3]}) == "1,2,3"
    assert openai_prompt({"prompt": 5}) is None and openai_prompt([]) is None
    assert kserve_prompt(json.dumps({"text_input": "gen"}).encode(), None) == "gen"
    infer = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["json"]}]}
    assert kserve_prompt(json.dumps(infer).encode(), None) == "json"
    assert kserve_prompt(b"\x00garbage", 3) is None


def test_a_busy_replica_429_goes_to_another_and_the_last_answer_is_relayed(fleet: Fleet) -> None:
    """A replica whose queue is full answers 429 before doing anything: the request goes to another replica (the
    busy one is not ejected: it is healthy); with no other replica left the 429 reaches the client as it was."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    hits: list[str] = []

    async def full(request: Request) -> JSONResponse:
        hits.append(request.url.path)
        body = {"error": {"message": "queue full", "type": "rate_limit_error"}}
        return JSONResponse(body, status_code=429, headers={"retry-after": "2"})

    gateway, gw, _ = fleet
    live = gateway.catalog.get(("team-a", "d")).endpoints
    with ServerThread(Starlette(routes=[Route("/{p:path}", full, methods=["POST"])])) as busy:
        gateway.catalog.set_slice("team-a", "d", "s", (busy.endpoint, *live))
        answers = [httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT) for _ in range(6)]
        assert all(r.status_code == 200 and r.json()["upstream"] == "upstream" for r in answers), answers
        assert hits  # the busy replica was tried, and every request it refused was served by the other
        assert len(hits) >= 2  # not ejected for a 429 (a healthy replica, only full): it stays in the rotation
        gateway.catalog.set_slice("team-a", "d", "s", (busy.endpoint,))
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT)
        assert r.status_code == 429 and r.headers["retry-after"] == "2" and r.json()["error"]["message"] == "queue full"


def test_a_spent_retry_budget_sends_the_replica_s_own_answer(fleet: Fleet) -> None:
    """With no budget, a 429 goes straight back even though another replica is free, and a refused connection is a
    502 naming the spent budget; a budget of one retry per two requests retries about half of them."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def full(request: Request) -> JSONResponse:
        return JSONResponse({"error": {"message": "queue full"}}, status_code=429)

    gateway, gw, _ = fleet
    labels = {"namespace": "team-a", "deployment": "d"}
    live = gateway.catalog.get(("team-a", "d")).endpoints
    with ServerThread(Starlette(routes=[Route("/{p:path}", full, methods=["POST"])])) as busy:
        gateway.catalog.set_slice("team-a", "d", "s", (busy.endpoint,))
        budget = gateway.retry_budget(gateway.catalog.get(("team-a", "d")))
        budget.ratio, budget.floor_per_second, budget.balance = 0.0, 0.0, 0.0
        gateway.catalog.set_slice("team-a", "d", "s", (busy.endpoint, *live))
        codes = {httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT).status_code for _ in range(6)}
        assert codes == {200, 429}  # the busy replica's 429 reached the client: nothing was retried
        assert gateway.metrics.registry.get_sample_value("infleet_gateway_retries_refused_total", labels)
        gateway.catalog.set_slice("team-a", "d", "s", (Endpoint("127.0.0.1", free_port()), *live))
        refused = [httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT) for _ in range(4)]
        dead = [r for r in refused if r.status_code != 200]
        assert dead and all(r.status_code == 502 and "retry budget" in r.json()["error"]["message"] for r in dead)

        budget.ratio = 0.5  # every request earns half a retry
        gateway.catalog.set_slice("team-a", "d", "s", (busy.endpoint, *live))
        before = gateway.metrics.registry.get_sample_value("infleet_gateway_retries_total", labels) or 0.0
        codes429 = [httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT).status_code for _ in range(20)].count(429)
        retried = (gateway.metrics.registry.get_sample_value("infleet_gateway_retries_total", labels) or 0) - before
        assert 1 <= retried <= 10 and codes429 >= 1  # never more retries than the ratio earned


def test_an_adapter_a_replica_lacks_goes_to_another_replica(fleet: Fleet) -> None:
    """A replica the operator has yet to load an adapter into answers 404 for it: the request goes to a replica
    that serves it; with none left the 404 reaches the client. The base model's 404 is an answer, not retried."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    hits: list[str] = []

    async def lacking(request: Request) -> JSONResponse:
        hits.append((await request.json())["model"])
        body = {"error": {"message": "the model 'sql' does not exist here", "code": "model_not_found"}}
        return JSONResponse(body, status_code=404)

    gateway, gw, _ = fleet
    gateway.catalog.set_deployment("team-a", "d", "m", adapters=(Adapter("sql"),))  # no URI: never loaded by us
    live = gateway.catalog.get(("team-a", "d")).endpoints
    with ServerThread(Starlette(routes=[Route("/{p:path}", lacking, methods=["POST"])])) as new:
        gateway.catalog.set_slice("team-a", "d", "s", (new.endpoint, *live))
        answers = [httpx.post(f"{gw.url}/v1/chat/completions", json={**CHAT, "model": "sql"}) for _ in range(6)]
        assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
        assert "sql" in hits  # the lacking replica was tried, and each request it refused went to the other
        base = [httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT).status_code for _ in range(6)]
        assert 404 in base and 200 in base  # the base model's 404 is relayed as it is
        gateway.catalog.set_slice("team-a", "d", "s", (new.endpoint,))
        r = httpx.post(f"{gw.url}/v1/chat/completions", json={**CHAT, "model": "sql"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


class Loading:
    """A replica without adapter `sql` until asked to load it (slowly), recording the load requests it gets."""

    def __init__(self, refuse: bool = False) -> None:
        self.loaded, self.refuse = False, refuse
        self.loads: list[dict[str, Any]] = []

    def app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, PlainTextResponse, Response
        from starlette.routing import Route

        async def load(request: Request) -> Response:
            self.loads.append(await request.json())
            await asyncio.sleep(0.3)  # a fetch takes a while: requests arriving meanwhile wait for this load
            if self.refuse:
                return JSONResponse({"error": {"message": "lora_path: no such adapter"}}, status_code=400)
            self.loaded = True
            return PlainTextResponse("Success")

        async def chat(request: Request) -> JSONResponse:
            model = (await request.json())["model"]
            if model == "sql" and not self.loaded:
                return JSONResponse({"error": {"message": "no model 'sql'", "code": "model_not_found"}}, 404)
            return JSONResponse({"object": "chat.completion", "model": model, "choices": []})

        return Starlette(
            routes=[
                Route("/v1/load_lora_adapter", load, methods=["POST"]),
                Route("/v1/chat/completions", chat, methods=["POST"]),
            ]
        )


def test_an_adapter_no_replica_holds_is_loaded_by_the_one_asked_last(fleet: Fleet) -> None:
    gateway, gw, _ = fleet
    sql = Adapter("sql", "s3://models/sql/", "v2")
    gateway.catalog.set_deployment("team-a", "d", "m", adapters=(sql,))
    replica = Loading()
    with ServerThread(replica.app()) as lacking:
        gateway.catalog.set_slice("team-a", "d", "s", (lacking.endpoint,))
        request = {**CHAT, "model": "sql"}
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            answers = list(pool.map(lambda _: httpx.post(f"{gw.url}/v1/chat/completions", json=request), range(5)))
        assert [r.status_code for r in answers] == [200] * 5, [r.text for r in answers]
        assert replica.loads == [{"lora_name": "sql", "lora_path": "s3://models/sql/", "revision": "v2"}]  # once
        loaded = 'infleet_gateway_adapter_loads_total{adapter="sql",deployment="d",namespace="team-a",result="loaded"}'
        assert f"{loaded} 1.0" in httpx.get(f"{gw.url}/metrics").text  # one load, however many requests waited
    refusing = Loading(refuse=True)
    with ServerThread(refusing.app()) as broken:
        gateway.catalog.set_slice("team-a", "d", "s", (broken.endpoint,))
        r = httpx.post(f"{gw.url}/v1/chat/completions", json={**CHAT, "model": "sql"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"  # the replica's own answer
        assert len(refusing.loads) == 1
        assert 'result="failed"} 1.0' in httpx.get(f"{gw.url}/metrics").text
