"""Error bodies as each API's clients read them, and which API a request path belongs to.

OpenAI clients read `{"error": {"message", "type", "param", "code"}}`; KServe v2 / Triton clients read
`{"error": "message"}`. The runtime and the gateway both answer both APIs, so the shapes live here once.
"""

from __future__ import annotations

from typing import Any

# HTTP status -> the OpenAI error `type` its clients expect (anything else: invalid_request_error)
OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_server_error",
    502: "upstream_error",
    503: "service_unavailable",
}


def is_kserve(path: str) -> bool:
    """KServe v2 paths live under /v2; everything else speaks OpenAI."""
    return path == "/v2" or path.startswith("/v2/")


def openai_error(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    kind = OPENAI_TYPES.get(status, "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def kserve_error(message: str) -> dict[str, Any]:
    return {"error": message}


def error_body(
    path: str, status: int, message: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The body a client of the API behind `path` can parse."""
    if is_kserve(path):
        return kserve_error(message)
    return openai_error(status, message, param=param, code=code)
