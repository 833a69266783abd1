"""One exception for every request the server refuses, rendered in the shape each API's clients expect.

Handlers raise `APIError`; the app renders it with `body(path)`, whose shapes live in `infleet.api.errors`.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from infleet.api.errors import error_body, openai_error


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}

    def openai_body(self) -> dict[str, Any]:
        return openai_error(self.status, self.message, param=self.param, code=self.code)

    def body(self, path: str) -> dict[str, Any]:
        """The body for a request to `path`: KServe's shape under /v2, OpenAI's elsewhere."""
        return error_body(path, self.status, self.message, param=self.param, code=self.code)


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param)


def from_validation_error(e: ValidationError) -> APIError:
    """The first pydantic error as `field: problem (got value)`, naming the field as clients spelled it."""
    err = e.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"] if not isinstance(p, str) or not p.startswith(("function-", "tagged-")))
    message = err["msg"]
    if message.startswith(("Value error, ", "Assertion failed, ")):
        message = message.split(", ", 1)[1]
    got = "" if err["type"] == "missing" or "input" not in err else f" (got {_short(err['input'])})"
    return APIError(400, f"{loc}: {message}{got}" if loc else f"{message}{got}", param=loc or None)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
