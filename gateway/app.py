"""The gateway's HTTP app: one OpenAI and KServe v2 entrypoint in front of every reachable InferenceDeployment.

A request's model name (the OpenAI `model` field, or the v2 path's model name) selects a deployment by its served
name; `namespace/servedName` or the `X-Infleet-Namespace` header picks among namespaces, and an API key's scope
limits which namespaces are visible. The body goes to one ready replica byte-exact (only a namespace-qualified
`model` field is rewritten to the bare served name the replica knows); SSE streams are relayed event by event as
they arrive, and other responses whole.

Failures: a replica that fails before the first byte reaches the client (connection refused or reset, a draining
replica's 503, a full queue's 429) is retried on another replica, up to MAX_ATTEMPTS replicas and within the
deployment's retry budget (gateway/retries.py); a 429 or 503 that is not retried (no other replica, or the budget is
spent) reaches the client as the replica sent it, Retry-After included. A request for a LoRA adapter that a replica
answers 404 (not loaded there yet) goes to another; when none tried holds it, the last one is asked to load it from
the spec's URI first. A stream that has started is never replayed: a mid-stream failure ends it with an SSE event
carrying an `error` key and `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import anyio
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

import infleet
from infleet.api import adapters as adapter_api
from infleet.api import sse
from infleet.api.errors import error_body
from infleet.gateway import cascade, peers
from infleet.gateway.activator import Activator, HoldPolicy, ModelStarting
from infleet.gateway.auth import KeyStore, Unauthorized
from infleet.gateway.budgets import Budgets, Refused, Usage, ask_for_usage, body_usage, metered, wants_usage
from infleet.gateway.cache import CACHE_HEADER, CACHED_PATHS, ResponseCaches, cache_key, deterministic, tenant
from infleet.gateway.catalog import (
    LEAST_OUTSTANDING,
    PREFIX_AFFINITY,
    Adapter,
    Catalog,
    Deployment,
    Endpoint,
    Key,
    LookupFailed,
)
from infleet.gateway.kv import KVFeeds
from infleet.gateway.metrics import CONTENT_TYPE, DeploymentSeries, GatewayMetrics
from infleet.gateway.prompts import kserve_prompt, openai_prompt
from infleet.gateway.retries import DEFAULT_FLOOR, DEFAULT_RATIO, RetryBudget
from infleet.gateway.routing import Router
from infleet.gateway.slo import RequestClock
from infleet.gateway.teams import Team, Teams

log = logging.getLogger("infleet.gateway")

NAMESPACE_HEADER = "x-infleet-namespace"
BINARY_HEADER = "inference-header-content-length"
MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_ATTEMPTS = 3  # replicas tried per request before the first byte
ADAPTER_LOAD_TIMEOUT = 300.0  # seconds a replica may take to fetch and load an adapter a request waits for
HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
    "transfer-encoding", "upgrade", "host", "content-length",
}  # fmt: skip
NOT_FORWARDED = HOP_BY_HOP | {"authorization", NAMESPACE_HEADER}  # the gateway's key never reaches a replica
NOT_FORWARDED_RAW = frozenset(h.encode("latin-1") for h in NOT_FORWARDED)  # as the ASGI scope holds header names
NOT_RETURNED = HOP_BY_HOP | {"date", "server"}  # the gateway's own server sets these
UPSTREAM_ERRORS = (aiohttp.ClientError, TimeoutError)  # a replica unreachable, gone or silent too long
# /v2/models/<name>[/versions/<v>][/ready|/infer|/generate|/generate_stream]; the name itself may hold a '/'
V2_MODEL_PATH = re.compile(
    r"^(?P<name>.+?)(?P<rest>(?:/versions/[^/]+)?(?:/(?:ready|infer|generate|generate_stream))?)$"
)


class GatewayError(Exception):
    def __init__(self, status: int, message: str, *, code: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.retry_after = retry_after


def sse_error(path: str, message: str) -> bytes:
    return sse.event(error_body(path, 502, message, code="upstream_disconnected"))


_EVENT_ENDS = (b"\n\n", b"\r\n\r\n", b"\r\r")


def _complete_events(buffer: bytes) -> int:
    """Length of the leading part of `buffer` made of complete SSE events (0 if none is complete)."""
    return max((i + len(sep) for sep in _EVENT_ENDS if (i := buffer.rfind(sep)) >= 0), default=0)


async def sse_events(upstream: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """Upstream bytes cut at event boundaries, each as soon as it is complete: never half an event, so an error
    event can always follow cleanly."""
    buffer = b""
    async for chunk in upstream.content.iter_any():
        buffer += chunk
        cut = _complete_events(buffer)
        if cut:
            yield buffer[:cut]
            buffer = buffer[cut:]
    if buffer:
        yield buffer


class RelayResponse(StreamingResponse):
    """A streamed response whose clean-up runs however the stream ends (finished, failed, client gone)."""

    def __init__(self, content: AsyncIterator[bytes], cleanup: Callable[[], Awaitable[None]], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.cleanup()


@dataclass
class Gateway:
    """Everything the handlers share."""

    catalog: Catalog = field(default_factory=Catalog)
    keys: KeyStore = field(default_factory=KeyStore)
    router: Router = field(default_factory=Router)
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    hold: HoldPolicy = field(default_factory=HoldPolicy)
    record_demand: Callable[[Deployment], Awaitable[None]] | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 600.0  # between two upstream chunks: a long prefill under load
    ready: Callable[[], bool] = lambda: True
    created: int = field(default_factory=lambda: int(time.time()))
    replica: str = field(default_factory=lambda: uuid.uuid4().hex)  # how its peers know it (gateway/peers.py)
    kv: KVFeeds = field(default_factory=KVFeeds)
    kv_routing: bool = True  # False: prefix affinity stays on the character ring even where replicas publish
    retry_ratio: float = DEFAULT_RATIO
    retry_floor: float = DEFAULT_FLOOR
    teams: Teams | None = None  # per-team limits and metering (gateway/budgets.py); None: off
    caches: ResponseCaches = field(default_factory=ResponseCaches)
    budgets: Budgets = field(init=False)
    activator: Activator = field(init=False)
    _budgets: dict[Key, RetryBudget] = field(default_factory=dict, init=False)
    _loads: dict[tuple[Endpoint, Adapter], asyncio.Future[bool]] = field(default_factory=dict, init=False)
    client: aiohttp.ClientSession | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.activator = Activator(self.catalog, self.metrics, self.hold, self.record_demand)
        self.budgets = Budgets(self.metrics.registry)
        if self.teams is not None:
            self.budgets.set_teams(self.teams)

    def open_client(self) -> aiohttp.ClientSession:
        """One pooled client for every replica (aiohttp: its C parser costs a fraction of httpx's per request).
        Bodies pass through as they are: no decompression, no redirects followed. No cookie jar: the client is shared
        by every caller, so a cookie one replica set for one caller must never ride along on another's request."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout, sock_read=self.read_timeout)
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
        self.client = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            headers={"accept-encoding": "identity"},
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return self.client

    def retry_budget(self, deployment: Deployment) -> RetryBudget:
        budget = self._budgets.get(deployment.key)
        if budget is None:
            budget = self._budgets[deployment.key] = RetryBudget(self.retry_ratio, self.retry_floor)
        return budget

    # ---- the proxy ----------------------------------------------------------------------------------------------

    async def forward(
        self,
        request: Request,
        deployment: Deployment,
        path: str,
        body: bytes,
        prompt: str | None,
        hashes: list[int] | None = None,
        adapter: Adapter | None = None,
    ) -> Response:
        """Send the request to a ready replica (holding it while there is none), trying another before the first
        byte when one is unreachable or answers 429/503, or 404 to a request for an `adapter` (a replica the operator
        has yet to load it into; when none holds it, the last one tried is asked to load it), at most MAX_ATTEMPTS,
        and relay the answer; the request is judged against the deployment's SLO (gateway/slo.py)."""
        self.metrics.series(deployment.namespace, deployment.name).received().inc()
        clock = RequestClock(deployment.slo)
        try:
            response = await self._forward(request, deployment, path, body, prompt, hashes or [], clock, adapter)
        except GatewayError as e:
            if e.status >= 500:
                clock.count(self.metrics.slo_requests, deployment.namespace, deployment.name, failed=True)
            raise
        code = response.status_code
        if not isinstance(response, RelayResponse) and (code < 400 or code >= 500):  # a stream counts at its end
            clock.count(self.metrics.slo_requests, deployment.namespace, deployment.name, failed=code >= 500)
        return response

    async def _forward(
        self,
        request: Request,
        deployment: Deployment,
        path: str,
        body: bytes,
        prompt: str | None,
        hashes: list[int],
        clock: RequestClock,
        adapter: Adapter | None = None,
    ) -> Response:
        series = self.metrics.series(deployment.namespace, deployment.name)
        labels = series.labels
        query = request.url.query if request.scope.get("query_string") else ""  # no URL built for the usual none
        url_path = path + (f"?{query}" if query else "")
        # request.headers.items() decodes the same raw pairs; filtering them first skips the ones not forwarded
        raw = request.scope["headers"]
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw if k.lower() not in NOT_FORWARDED_RAW]
        tried: list[Endpoint] = []
        failure = ""
        budget = self.retry_budget(deployment)
        budget.deposit()
        for attempt in range(MAX_ATTEMPTS):
            if attempt > 1 and all(e in tried for e in deployment.endpoints):
                break  # only the second attempt may wait for a new replica; later ones need an untried one
            if attempt:
                series.retries().inc()
            deployment, endpoint, release = await self._pick(deployment, prompt, hashes, tried, series)
            upstream: aiohttp.ClientResponse | None = None
            handed_off = False  # a relayed stream owns the upstream: its clean-up closes it and releases the replica
            try:
                upstream = await self._send(request.method, endpoint.url + url_path, headers, body)
                others = any(e not in tried for e in deployment.endpoints)  # what router.usable() would leave
                if retry_elsewhere(upstream.status, attempt, others, adapter is not None):
                    if budget.withdraw():
                        failure = f"{endpoint.url} answered {upstream.status}: {(await upstream.read())[:200]!r}"
                        if upstream.status == 503:
                            self.router.eject(endpoint)  # a 429 replica is healthy, only full for now
                        continue
                    series.retries_refused().inc()  # the replica's own answer goes back
                last_try = not others or attempt >= MAX_ATTEMPTS - 1
                if upstream.status == 404 and adapter is not None and adapter.uri and last_try:
                    await upstream.read()  # no replica tried holds it: this one loads it, then answers
                    if await self._load_adapter(endpoint, adapter, labels):
                        upstream.release()
                        upstream = await self._send(request.method, endpoint.url + url_path, headers, body)
                response = await self._answer(upstream, path, labels, clock, release)
                handed_off = isinstance(response, RelayResponse)
                return response
            except UPSTREAM_ERRORS as e:
                failure = f"{endpoint.url}: {type(e).__name__}: {e}"
                log.warning("replica %s of %s failed before the first byte: %s", endpoint.url, deployment.qualified, e)
                self.router.eject(endpoint)
                if attempt + 1 < MAX_ATTEMPTS and not budget.withdraw():
                    series.retries_refused().inc()
                    failure += "; the deployment's retry budget is spent"
                    break
            finally:
                if not handed_off:  # nothing here awaits, so a cancelled request cannot skip it (no shield needed)
                    if upstream is not None:
                        upstream.release()  # back to the pool if read to the end, else the connection closes
                    release()
        series.errors("upstream_unreachable").inc()
        raise GatewayError(502, f"no replica of {deployment.served_name!r} answered ({failure})", code="bad_gateway")

    async def _load_adapter(self, endpoint: Endpoint, adapter: Adapter, labels: dict[str, str]) -> bool:
        """Ask the replica to load the adapter from its URI (the runtime fetches it into its cache); one load per
        replica and adapter at a time, however many requests for it are waiting."""
        key = (endpoint, adapter)
        task = self._loads.get(key)
        if task is None:
            task = self._loads[key] = asyncio.ensure_future(self._post_load(endpoint, adapter, labels))
            task.add_done_callback(lambda _: self._loads.pop(key, None))
        return await asyncio.shield(task)

    async def _post_load(self, endpoint: Endpoint, adapter: Adapter, labels: dict[str, str]) -> bool:
        assert self.client is not None, "the app's lifespan opens the client"
        assert adapter.uri is not None, "only an adapter with a URI is loaded by the gateway"
        body = adapter_api.load_body(adapter.name, adapter.uri, adapter.revision)
        try:
            timeout = aiohttp.ClientTimeout(total=ADAPTER_LOAD_TIMEOUT)
            async with self.client.post(f"{endpoint.url}{adapter_api.LOAD_PATH}", json=body, timeout=timeout) as r:
                answer = await r.text()
            loaded = r.status == 200
            if not loaded:
                log.warning(
                    "replica %s refused to load adapter %r (%d): %s", endpoint.url, adapter.name, r.status, answer
                )
        except UPSTREAM_ERRORS as e:
            log.warning("replica %s did not load adapter %r: %s", endpoint.url, adapter.name, e)
            loaded = False
        self.metrics.adapter_loads.labels(**labels, adapter=adapter.name, result="loaded" if loaded else "failed").inc()
        return loaded

    async def _pick(
        self,
        deployment: Deployment,
        prompt: str | None,
        hashes: list[int],
        tried: list[Endpoint],
        series: DeploymentSeries,
    ) -> tuple[Deployment, Endpoint, Callable[[], None]]:
        """A ready replica not tried yet (held while the deployment has none), counted as busy until `release`."""
        try:
            deployment = await self.activator.endpoints(deployment, exclude=tried)
        except ModelStarting as e:
            raise GatewayError(503, e.message, code="model_starting", retry_after=e.retry_after) from None
        except LookupError as e:
            raise GatewayError(404, str(e), code="model_not_found") from None
        series.endpoints().set(len(deployment.endpoints))
        candidates = self.router.usable(deployment.endpoints, tried)
        choice = self.router.choose(deployment, prompt, candidates, hashes, self.kv.index)
        series.routing(choice.strategy).inc()
        if choice.affinity:
            series.affinity(choice.affinity).inc()
        endpoint = choice.endpoint
        tried.append(endpoint)
        self.router.acquire(endpoint)
        in_flight = series.in_flight()
        in_flight.inc()
        released = False

        def release() -> None:  # plain, not async: it must never be cut short by a cancellation
            nonlocal released
            if not released:
                released = True
                self.router.release(endpoint)
                in_flight.dec()

        return deployment, endpoint, release

    async def _send(self, method: str, url: str, headers: list[tuple[str, str]], body: bytes) -> aiohttp.ClientResponse:
        """The replica's answer, its body still unread."""
        assert self.client is not None, "the app's lifespan opens the client"
        return await self.client.request(method, url, headers=headers, data=body or None, allow_redirects=False)

    async def _answer(
        self,
        upstream: aiohttp.ClientResponse,
        path: str,
        labels: dict[str, str],
        clock: RequestClock,
        release: Callable[[], None],
    ) -> Response:
        """A plain answer read whole, or a stream relayed once its first event is here (so that a replica failing
        before it is retried elsewhere); the stream's clean-up then closes the upstream and releases the replica."""
        returned = {k: v for k, v in upstream.headers.items() if k.lower() not in NOT_RETURNED}
        if not upstream.headers.get("content-type", "").startswith(sse.MEDIA_TYPE):
            content = await upstream.read()
            return Response(content, status_code=upstream.status, headers=returned)
        events = sse_events(upstream)
        first = await anext(events, b"")
        clock.event(sse.data_events(first))
        return RelayResponse(
            self._relay(first, events, path, labels, clock),
            cleanup=self._closer(upstream, events, release),
            status_code=upstream.status,
            headers=returned,
        )

    async def _relay(
        self, first: bytes, events: AsyncIterator[bytes], path: str, labels: dict[str, str], clock: RequestClock
    ) -> AsyncIterator[bytes]:
        if first:
            yield first
        try:
            async for chunk in events:
                yield chunk
                clock.event(sse.data_events(chunk))
        except UPSTREAM_ERRORS as e:  # the replica went away mid-stream: never replay, end the stream cleanly
            self.metrics.errors.labels(**labels, reason="stream_interrupted").inc()
            log.warning("stream from %s/%s interrupted: %s", labels["namespace"], labels["deployment"], e)
            clock.count(self.metrics.slo_requests, labels["namespace"], labels["deployment"], failed=True)
            yield sse_error(path, f"the replica serving this stream failed: {type(e).__name__}: {e}")
            yield sse.DONE
            return
        # reached only when the stream ran to its end (a client that went away closes the generator before)
        clock.count(self.metrics.slo_requests, labels["namespace"], labels["deployment"])

    @staticmethod
    def _closer(
        upstream: aiohttp.ClientResponse, events: AsyncIterator[bytes], release: Callable[[], None]
    ) -> Callable[[], Awaitable[None]]:
        async def close() -> None:
            try:
                await events.aclose()  # type: ignore[attr-defined]
                upstream.release()
            finally:
                release()

        return close


def retry_elsewhere(status: int, attempt: int, others: bool, adapter: bool = False) -> bool:
    """Nothing was done yet: a 429 (the replica's queue is full) goes to another replica if there is one; a 503
    (draining or starting) too, and on the first attempt also waits for a new replica (a rolling update); a 404 for
    an adapter (not loaded there yet) goes to another replica if there is one."""
    if attempt >= MAX_ATTEMPTS - 1:
        return False
    if status == 503:
        return others or attempt == 0
    return others and (status == 429 or (status == 404 and adapter))


# ---- handlers ------------------------------------------------------------------------------------------------------


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def _error(request: Request, e: GatewayError) -> Response:
    headers = {"Retry-After": str(e.retry_after)} if e.retry_after is not None else None
    return JSONResponse(error_body(request.url.path, e.status, e.message, code=e.code), e.status, headers=headers)


def _scope(request: Request) -> frozenset[str] | None:
    keys = _gateway(request).keys
    if not keys.enabled:  # every namespace, without looking the header up
        return None
    try:
        return keys.authorize(request.headers.get("authorization"))
    except Unauthorized as e:
        raise GatewayError(401, str(e), code="invalid_api_key") from None


def _lookup(request: Request, model: str, scope: frozenset[str] | None) -> Deployment:
    """The deployment `model` selects among the namespaces `scope` (the caller's _scope()) lets the request see."""
    gateway = _gateway(request)
    try:
        return gateway.catalog.lookup(model, scope, request.headers.get(NAMESPACE_HEADER))
    except LookupFailed as e:
        raise GatewayError(e.status, e.message, code="model_not_found" if e.status == 404 else None) from None


async def _body(request: Request) -> bytes:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise GatewayError(413, f"request body of {length} bytes exceeds the gateway's {MAX_BODY_BYTES} byte limit")
    body = b""
    while True:  # the ASGI messages themselves: request.stream() is an async generator around this same loop
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        body += message.get("body", b"")
        if len(body) > MAX_BODY_BYTES:
            raise GatewayError(413, f"request body exceeds the gateway's {MAX_BODY_BYTES} byte limit")
        if not message.get("more_body", False):
            return body


def _count(gateway: Gateway, deployment: Deployment | None, status: int) -> None:
    ns, name = deployment.key if deployment else ("", "")
    gateway.metrics.series(ns, name).requests(status).inc()


async def openai_request(request: Request) -> Response:
    """POST /v1/completions, /v1/chat/completions, /tokenize and /detokenize: routed by the body's model."""
    gateway = _gateway(request)
    deployment = None
    try:
        scope = _scope(request)  # 401 comes before any look at the body
        body = await _body(request)
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise GatewayError(400, "the request body is not valid JSON") from None
        if not isinstance(payload, dict):
            raise GatewayError(400, "the request body must be a JSON object")
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            served = ", ".join(repr(m) for m in sorted(gateway.catalog.model_ids(scope))) or "none"
            raise GatewayError(400, f"model: a model name is required; served models: {served}")
        deployment = _lookup(request, model, scope)
        if deployment.is_cascade(model):
            response = await cascaded(request, deployment, payload)
            _count(gateway, deployment, response.status_code)
            return response
        if model != (name := deployment.runtime_name(model)):  # namespace-qualified: the replica knows the bare one
            payload["model"] = name
            body = json.dumps(payload).encode()
        prompt, hashes = None, None  # only routing reads the prompt
        if deployment.strategy == PREFIX_AFFINITY:
            prompt = openai_prompt(payload)
            hasher = gateway.kv.follow(deployment) if gateway.kv_routing else None
            hashes = hasher.hashes(payload) if hasher and gateway.kv.publishing(deployment.endpoints) else None
        if deployment.cache is None and not gateway.budgets.enabled:
            adapter = deployment.adapter(name)
            path = request.scope["path"]  # request.url.path for the fixed paths routed here, without building a URL
            response = await gateway.forward(request, deployment, path, body, prompt, hashes, adapter)
        else:
            response = await cost_controlled(request, deployment, payload, body, prompt, hashes)
    except GatewayError as e:
        response = _error(request, e)
    _count(gateway, deployment, response.status_code)
    return response


async def cascaded(request: Request, first: Deployment, payload: dict[str, Any]) -> Response:
    """A cascade's answer (gateway/cascade.py): each model in turn, whole answers with logprobs, until one is sure
    or the last answers; headers name the model that answered. A streamed request gets a kept answer as one burst
    of stream events and the last model's answer streamed. Team limits admit the request once, and every model
    asked is charged to the team."""
    gateway, path = _gateway(request), request.url.path
    rule = first.cascade
    assert rule is not None
    if path not in cascade.PATHS:
        raise GatewayError(400, f"{path}: a cascade answers {' and '.join(cascade.PATHS)} only")
    chain = [first]
    for name in rule.escalate_to:
        try:
            chain.append(gateway.catalog.lookup(name, _scope(request), first.namespace))
        except LookupFailed:
            message = f"the cascade {rule.name!r} escalates to {name!r}, which is not served in {first.namespace!r}"
            raise GatewayError(503, message, code="cascade_incomplete") from None
    budgets = gateway.budgets
    team = budgets.teams.team_for(request.headers.get("authorization"), first.namespace) if budgets.enabled else None
    if team is not None:
        try:
            budgets.admit(team)
        except Refused as e:
            raise GatewayError(429, e.message, code=e.code, retry_after=e.retry_after) from None
    labels = {"namespace": first.namespace, "cascade": rule.name}
    stream = payload.get("stream") is True
    spent = 0.0
    for i, d in enumerate(chain):
        last = i == len(chain) - 1
        asked = {**payload, "model": d.served_name}
        hide_usage = ask_for_usage(asked) if last and stream else False  # the last model's cost comes from its usage
        asked = asked if last else cascade.ask_for_logprobs(path, cascade.whole(asked))
        prompt = openai_prompt(asked) if d.strategy == PREFIX_AFFINITY else None
        try:
            response = await gateway.forward(request, d, path, json.dumps(asked).encode(), prompt)
        except GatewayError:  # no replica answered (none ready, all unreachable): the next model may
            if last:
                raise
            gateway.metrics.cascade_escalations.labels(**labels, model=d.served_name, reason="error").inc()
            continue
        headers = {cascade.MODEL_HEADER: d.served_name, cascade.ESCALATIONS_HEADER: str(i)}
        if isinstance(response, RelayResponse):  # the last model, streaming
            return _cascade_stream(gateway, response, d, team, labels, spent, hide_usage, headers)
        answer = _json_object(bytes(response.body)) if response.status_code == 200 else None
        usage = Usage.of(answer)
        if usage is not None:
            if budgets.enabled:
                budgets.charge(team, d.namespace, d.name, d.served_name, d.price, usage)
            spent += (usage.input + usage.output) * (d.price or 0.0) / 1e6
        reason = None if last else ("error" if answer is None else cascade.why_escalate(rule, path, answer))
        if reason is not None:
            gateway.metrics.cascade_escalations.labels(**labels, model=d.served_name, reason=reason).inc()
            continue
        gateway.metrics.cascade_requests.labels(**labels, model=d.served_name).inc()
        gateway.metrics.cascade_cost.labels(**labels, model=d.served_name).inc(spent)
        if answer is None:  # the last model's error, as it was
            return Response(response.body, status_code=response.status_code, headers={**response.headers, **headers})
        kept = cascade.hide_logprobs(path, payload, answer)
        if stream:
            events = cascade.as_stream(path, kept, wants_usage(payload))
            return Response(events, media_type=sse.MEDIA_TYPE, headers={**headers, "Cache-Control": "no-cache"})
        return JSONResponse(kept, headers=headers)
    raise AssertionError("the last model of a cascade always answers")


def _cascade_stream(
    gateway: Gateway,
    response: RelayResponse,
    d: Deployment,
    team: Team | None,
    labels: dict[str, str],
    spent: float,
    hide_usage: bool,
    headers: dict[str, str],
) -> RelayResponse:
    """The last model's stream, counted as the cascade's answer: its cost (and the team's charge) is read from the
    usage chunk as it passes, added to what the models before it cost."""
    gateway.metrics.cascade_requests.labels(**labels, model=d.served_name).inc()
    cost = gateway.metrics.cascade_cost.labels(**labels, model=d.served_name)
    cost.inc(spent)

    def charge(usage: Usage) -> None:
        if gateway.budgets.enabled:
            gateway.budgets.charge(team, d.namespace, d.name, d.served_name, d.price, usage)
        cost.inc((usage.input + usage.output) * (d.price or 0.0) / 1e6)

    response.body_iterator = metered(response.body_iterator, hide_usage, charge)
    response.headers.update(headers)
    return response


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        found = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return found if isinstance(found, dict) else None


async def cost_controlled(
    request: Request,
    deployment: Deployment,
    payload: dict[str, Any],
    body: bytes,
    prompt: str | None,
    hashes: list[int] | None,
) -> Response:
    """An OpenAI request to a deployment whose answers are cached, or from a metered team: a cache hit answers at
    once (and costs nothing); otherwise the team's limits admit it (a 429 if not), it is forwarded, and its answer
    is kept and charged (gateway/cache.py, gateway/budgets.py)."""
    gateway = _gateway(request)
    path, authorization = request.url.path, request.headers.get("authorization")
    labels = {"namespace": deployment.namespace, "deployment": deployment.name}
    cache, key = None, b""
    if deployment.cache is not None and path in CACHED_PATHS and deterministic(payload):
        cache = gateway.caches.for_deployment(deployment.key, deployment.cache)
        key = cache_key(tenant(authorization), deployment.namespace, deployment.name, path, payload)
        entry = cache.get(key)
        gateway.metrics.response_cache.labels(**labels, result="hit" if entry else "miss").inc()
        if entry is not None:
            return Response(entry.body, status_code=entry.status, headers={**dict(entry.headers), CACHE_HEADER: "hit"})
    budgets = gateway.budgets
    team = budgets.teams.team_for(authorization, deployment.namespace) if budgets.enabled else None
    if team is not None:
        try:
            budgets.admit(team)
        except Refused as e:
            raise GatewayError(429, e.message, code=e.code, retry_after=e.retry_after) from None
    hide = False
    if budgets.enabled and payload.get("stream") is True and path in CACHED_PATHS:
        hide = ask_for_usage(payload)
        body = json.dumps(payload).encode() if hide else body

    def charge(usage: Usage) -> None:
        model = deployment.served_name
        budgets.charge(team, deployment.namespace, deployment.name, model, deployment.price, usage)

    adapter = deployment.adapter(str(payload.get("model")))
    response = await gateway.forward(request, deployment, path, body, prompt, hashes, adapter)
    if isinstance(response, RelayResponse):
        if budgets.enabled:
            response.body_iterator = metered(response.body_iterator, hide, charge)
        return response
    if response.status_code == 200:
        if budgets.enabled and (usage := body_usage(bytes(response.body))) is not None:
            charge(usage)
        if cache is not None and response.headers.get("content-type", "").startswith("application/json"):
            returned = {k: v for k, v in response.headers.items() if k.lower() not in NOT_RETURNED}
            cache.put(key, response.status_code, returned, bytes(response.body))
            response.headers[CACHE_HEADER] = "miss"
    return response


async def list_models(request: Request) -> Response:
    gateway = _gateway(request)
    try:
        scope = _scope(request)
    except GatewayError as e:
        return _error(request, e)
    data = [
        {"id": model_id, "object": "model", "created": gateway.created, "owned_by": d.namespace}
        | ({"parent": d.served_name} if d.runtime_name(model_id) != d.served_name else {})
        for model_id, d in sorted(gateway.catalog.model_ids(scope).items())
    ]
    return JSONResponse({"object": "list", "data": data})


async def kserve_model(request: Request) -> Response:
    """Everything under /v2/models/<name>: forwarded to a replica with the path naming its served name."""
    gateway = _gateway(request)
    deployment = None
    try:
        match = V2_MODEL_PATH.match(request.path_params["rest"])
        if match is None:
            raise GatewayError(404, f"no such KServe v2 path: {request.url.path}")
        deployment = _lookup(request, match["name"], _scope(request))
        path = f"/v2/models/{quote(deployment.served_name, safe='')}{match['rest']}"
        if match["rest"].endswith("/ready") and not deployment.endpoints:
            # readiness is a question, not demand: answer it without waking the deployment
            raise GatewayError(503, f"model {deployment.served_name!r} has no ready replica (it may be scaled to zero)")
        body = await _body(request) if request.method == "POST" else b""
        length = request.headers.get(BINARY_HEADER)
        routed = body and deployment.strategy != LEAST_OUTSTANDING
        prompt = kserve_prompt(body, int(length) if length and length.isdigit() else None) if routed else None
        response = await gateway.forward(request, deployment, path, body, prompt)
    except GatewayError as e:
        response = _error(request, e)
    _count(gateway, deployment, response.status_code)
    return response


async def server_metadata(request: Request) -> Response:
    return JSONResponse(
        {"name": "infleet-gateway", "version": infleet.__version__, "extensions": ["binary_tensor_data", "generate"]}
    )


async def health(request: Request) -> Response:
    if _gateway(request).ready():
        return PlainTextResponse("ok")
    return PlainTextResponse("starting: discovery has not listed the fleet yet", status_code=503)


async def metrics(request: Request) -> Response:
    gateway = _gateway(request)
    for d in gateway.catalog.deployments():
        gateway.metrics.declare_slo(d.namespace, d.name, (sli for sli, _ in d.slo.items()))
    return Response(gateway.metrics.render(), media_type=CONTENT_TYPE)


async def team_tokens(request: Request) -> Response:
    """The tokens this replica has charged each team since it started, for its peers' limits (gateway/peers.py)."""
    gateway = _gateway(request)
    return JSONResponse(peers.report(gateway.replica, gateway.budgets.charged()))


OPENAI_PATHS = ("/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize")  # vLLM's utilities too


class GatewayApp(Starlette):
    """Starlette, but a POST to an OpenAI path goes straight to `openai_request`: Starlette's two exception layers,
    its router's walk over every route and its per-request wrappers cost a tenth of the gateway's CPU per proxied
    request. Everything else (other paths and methods, the lifespan) goes through Starlette as it is."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in OPENAI_PATHS:
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        try:
            response = await openai_request(Request(scope, receive, send))
        except Exception:
            # as Starlette's ServerErrorMiddleware answers (the handler turns every GatewayError into its answer
            # and raises no HTTPException, so nothing else of Starlette's exception handling applies)
            await PlainTextResponse("Internal Server Error", status_code=500)(scope, receive, send)
            raise
        await response(scope, receive, send)  # once it has started, an exception only propagates (as in Starlette)


def build_app(
    gateway: Gateway, *, on_start: Callable[[], None] | None = None, on_stop: Callable[[], None] | None = None
) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        gateway.activator.attach(asyncio.get_running_loop())
        client = gateway.kv.client = gateway.open_client()
        if on_start:
            on_start()
        try:
            yield
        finally:
            if on_stop:
                on_stop()
            await gateway.kv.close()
            await client.close()

    app = GatewayApp(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route(peers.PATH, team_tokens, methods=["GET"]),
            Route("/v1/models", list_models, methods=["GET"]),
            # a POST to these skips Starlette (GatewayApp); the routes answer other methods (405) as before
            *(Route(path, openai_request, methods=["POST"]) for path in OPENAI_PATHS),
            Route("/v2", server_metadata, methods=["GET"]),
            Route("/v2/health/live", health, methods=["GET"]),
            Route("/v2/health/ready", health, methods=["GET"]),
            Route("/v2/models/{rest:path}", kserve_model, methods=["GET", "POST"]),
        ],
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    return app
