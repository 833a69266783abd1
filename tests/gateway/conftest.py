"""Gateway test support: real HTTP servers (uvicorn in a thread) for the gateway and for small upstream apps whose
behaviour a test controls (echo the request, stream on cue, die mid-stream)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from infleet.gateway.app import Gateway, build_app
from infleet.gateway.catalog import Endpoint


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class ServerThread:
    """An ASGI app served by uvicorn on a loopback address, in a daemon thread."""

    def __init__(self, app: Any, host: str = "127.0.0.1") -> None:
        self.host, self.port = host, free_port(host)
        self.server = uvicorn.Server(
            uvicorn.Config(
                app, host=host, port=self.port, log_level="warning", lifespan="on", timeout_graceful_shutdown=1
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.host, self.port)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        for _ in range(500):
            if self.server.started:
                return self
            if not self.thread.is_alive():
                raise RuntimeError("the server thread exited during start-up")
            threading.Event().wait(0.01)
        raise TimeoutError("the server did not start in 5 s")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@dataclass
class Upstream:
    """A replica stand-in that records what reached it; `/v1/chat/completions` with `stream` waits for `go`
    between its first and second event (so a test can prove the first event got through on its own), and a
    prompt of "die" breaks the stream after the first event."""

    name: str = "upstream"
    seen: list[dict[str, Any]] = field(default_factory=list)
    go: threading.Event = field(default_factory=threading.Event)
    released_by_client: bool | None = None

    def app(self) -> Starlette:
        async def echo(request: Request) -> Response:
            body = await request.body()
            record = {"path": request.url.path, "headers": dict(request.headers), "body": body}
            self.seen.append(record)
            payload = json.loads(body) if request.headers.get("content-type") == "application/json" else None
            if payload and payload.get("stream"):
                return StreamingResponse(self._stream(payload), media_type="text/event-stream")
            if request.url.path.startswith("/v2"):
                headers = {
                    k: v for k, v in request.headers.items() if k in ("inference-header-content-length", "content-type")
                }
                headers["x-upstream-path"] = request.url.path
                return Response(body, headers=headers)
            answer = {"upstream": self.name, "model": payload.get("model") if payload else None}
            return JSONResponse(answer, headers={"set-cookie": f"replica={self.name}; Path=/"})

        return Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "POST"])])

    async def _stream(self, payload: dict[str, Any]) -> AsyncIterator[bytes]:
        yield b'data: {"n": 1}\n\n'
        if payload.get("messages", [{}])[-1].get("content") == "die":
            raise RuntimeError("replica died mid-stream")
        self.released_by_client = await asyncio.to_thread(self.go.wait, 30)
        yield b'data: {"n": 2}\n\n'
        yield b"data: [DONE]\n\n"


@pytest.fixture
def upstream() -> Iterator[tuple[Upstream, ServerThread]]:
    up = Upstream()
    with ServerThread(up.app()) as server:
        yield up, server
    up.go.set()


def serve_gateway(gateway: Gateway) -> ServerThread:
    return ServerThread(build_app(gateway))
