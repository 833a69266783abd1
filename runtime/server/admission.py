"""Whether the server takes new work: ready after start-up, draining after SIGTERM.

Every POST is work. While not ready or draining, a new one gets 503 with Retry-After (so a load balancer or the
gateway retries elsewhere) and `/health` says 503; requests already admitted run to the end, and the count of
them tells the shutdown sequence when it may stop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from infleet.runtime.server.errors import APIError

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
