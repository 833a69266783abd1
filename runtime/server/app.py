"""The runtime's one HTTP app on port 8000: OpenAI and KServe v2 APIs, `/health` and `/metrics`, over one engine."""

from __future__ import annotations

import asyncio
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

from infleet.runtime.metrics import CONTENT_TYPE, RuntimeMetrics
from infleet.runtime.server import kserve, openai
from infleet.runtime.server.admission import Admission, ServerState
from infleet.runtime.server.errors import APIError

if TYPE_CHECKING:
    from infleet.runtime.engine.engine import AsyncEngine

log = logging.getLogger("infleet.runtime.server")
ENGINE_SHUTDOWN_SECONDS = 10.0


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
            *openai.routes(),
            *kserve.routes(),
        ],
        middleware=[Middleware(Admission, state=serving.state)],
        exception_handlers={APIError: api_error, Exception: internal_error},
        lifespan=lifespan,
    )
    app.state.serving = serving
    return app
