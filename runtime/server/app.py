"""The runtime's one HTTP app on port 8000: OpenAI and KServe v2 APIs, `/health` and `/metrics`, over one engine.

Whether the server takes new work: ready after start-up, draining after SIGTERM. Every POST is work. While not
ready or draining, a new one gets 503 with Retry-After (so a load balancer or the gateway retries elsewhere) and
`/health` says 503; requests already admitted run to the end, and the count of them tells the shutdown sequence
when it may stop (`Admission`, the app's middleware).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from infleet.runtime.metrics import CONTENT_TYPE, RuntimeMetrics
from infleet.runtime.server import kserve, kv_events, lora, openai, tokenize
from infleet.runtime.server.errors import APIError

if TYPE_CHECKING:
    from infleet.runtime.engine.engine import AsyncEngine

log = logging.getLogger("infleet.runtime.server")
ENGINE_SHUTDOWN_SECONDS = 10.0

RETRY_AFTER_SECONDS = 5
MAX_BODY_BYTES = 32 * 1024 * 1024  # far above any prompt that fits a context; refuses memory-filling uploads


@dataclass
class ServerState:
    ready: bool = False
    draining: bool = False
    in_flight: int = 0

    @property
    def accepting(self) -> bool:
        return self.ready and not self.draining

    def admitted(self) -> None:
        self.in_flight += 1

    def done(self) -> None:
        self.in_flight -= 1


def refusal(state: ServerState) -> APIError:
    why = "the server is shutting down" if state.draining else "the model is still loading"
    return APIError(503, f"{why}; retry on another replica", code="unavailable", retry_after=RETRY_AFTER_SECONDS)


class Admission:
    """ASGI middleware: refuse POSTs unless accepting (or too large), count admitted ones until their response ends."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if not self.state.accepting:
            await self._refuse(scope, send, refusal(self.state))
            return
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            too_big = APIError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
            await self._refuse(scope, send, too_big)
            return
        self.state.admitted()
        try:
            await self.app(scope, receive, send)
        finally:
            self.state.done()

    async def _refuse(self, scope: Scope, send: Send, error: APIError) -> None:
        body = error.body(scope["path"])
        payload = json.dumps(body).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in error.headers().items()]
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


@dataclass
class Serving:
    """What the handlers share: the engine, the name clients use for it, and the admission state."""

    engine: AsyncEngine
    served_name: str
    metrics: RuntimeMetrics
    state: ServerState = field(default_factory=ServerState)
    created: int = field(default_factory=lambda: int(time.time()))

    def quantization(self) -> dict[str, Any]:
        """The tier the weights were loaded at and how (reported by `/v1/models` and the v2 model metadata)."""
        info = self.engine.tier_info
        details = info.to_dict() if info is not None else {}
        return {**details, "tier": self.engine.tier}


async def health(request: Request) -> Response:
    state: ServerState = request.app.state.serving.state
    if state.accepting:
        return PlainTextResponse("ok")
    return PlainTextResponse("draining" if state.draining else "starting", status_code=503)


async def metrics(request: Request) -> Response:
    serving: Serving = request.app.state.serving
    stats = serving.engine.stats()  # refresh the gauges at scrape time, so an idle engine reads zero
    serving.metrics.set_queue(stats.running, stats.waiting, stats.kv_cache_usage)
    return Response(serving.metrics.render(), media_type=CONTENT_TYPE)


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    body = exc.body(request.url.path)
    return JSONResponse(body, status_code=exc.status, headers=exc.headers())


async def internal_error(request: Request, exc: Exception) -> Response:
    log.exception("request %s %s failed", request.method, request.url.path, exc_info=exc)
    return await api_error(request, APIError(500, f"internal error: {type(exc).__name__}: {exc}"))


def build_app(serving: Serving, *, manage_engine: bool = True) -> Starlette:
    """The ASGI app. With `manage_engine`, its lifespan starts the engine and shuts it down after the last request."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if manage_engine:
            serving.engine.start()
        serving.state.ready = True
        try:
            yield
        finally:
            serving.state.ready = False
            if manage_engine:  # requests were drained already; anything left is aborted
                try:
                    await asyncio.wait_for(serving.engine.shutdown(), ENGINE_SHUTDOWN_SECONDS)
                except TimeoutError:
                    log.warning("the engine did not stop within %ss", ENGINE_SHUTDOWN_SECONDS)

    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/kv/events", kv_events.events, methods=["GET"]),
            Route("/kv/tokenizer", kv_events.tokenizer, methods=["GET"]),
            *openai.routes(),
            *lora.routes(),
            *tokenize.routes(),
            *kserve.routes(),
        ],
        middleware=[Middleware(Admission, state=serving.state)],
        exception_handlers={APIError: api_error, Exception: internal_error},
        lifespan=lifespan,
    )
    app.state.serving = serving
    app.state.kv_events = kv_events.KVEvents.attach(serving.engine)
    return app
