"""Running one request through the engine on behalf of an HTTP handler.

Three things every API needs: overload becomes a 429 before any response byte is sent (so the first output is
awaited up front), the engine request is aborted whenever the handler stops listening (client gone, error,
shutdown), and a client that disconnects while a non-streaming request runs cancels it too.
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from starlette.requests import Request

from infleet.runtime.engine.engine import EngineClosed, QueueFull, RequestOutput
from infleet.runtime.engine.sampler import SamplingParams, TokenLogprob
from infleet.runtime.lora.manager import UnknownAdapter
from infleet.runtime.server.errors import APIError

if TYPE_CHECKING:
    from infleet.runtime.engine.engine import AsyncEngine

T = TypeVar("T")
RETRY_AFTER_SECONDS = 1


THREAD_ENCODE_CHARS = 8192


async def encode(tokenizer: Any, text: str, *, add_special_tokens: bool = True) -> list[int]:
    """Token ids of `text`; a long text is encoded on a worker thread so it does not stall every other stream."""
    if len(text) < THREAD_ENCODE_CHARS:
        ids: list[int] = tokenizer.encode(text, add_special_tokens=add_special_tokens)
    else:
        ids = await asyncio.to_thread(tokenizer.encode, text, add_special_tokens=add_special_tokens)
    return ids


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def make_params(kwargs: dict[str, Any], max_model_len: int, prompt_len: int) -> SamplingParams:
    """The engine's sampling parameters; its own validation failures are 400s naming the field."""
    params = SamplingParams(**kwargs)
    try:
        params.validate(max_model_len, prompt_len)
    except ValueError as e:
        message = str(e)
        field = message.split(":", 1)[0] if ":" in message else None
        raise APIError(400, message, param=field) from None
    return params


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's `usage` object; `completion_tokens` counts every choice's."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


@dataclass
class Finished:
    """A whole generation (one choice of it), for non-streaming responses."""

    text: str
    token_ids: list[int]
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    index: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] | None = None


class Generation:
    """The engine's outputs for one request, with its first output already in hand."""

    def __init__(self, outputs: AsyncIterator[RequestOutput], first: RequestOutput | None) -> None:
        self._outputs = outputs
        self._first = first

    def __aiter__(self) -> AsyncIterator[RequestOutput]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[RequestOutput]:
        try:
            if self._first is not None:
                first, self._first = self._first, None
                yield first
                if first.request_done:
                    return
            async for out in self._outputs:
                yield out
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Abort the engine request if it still runs; shielded so a cancelled handler still reaches the engine."""
        closer = getattr(self._outputs, "aclose", None)
        if closer is not None:
            with anyio.CancelScope(shield=True):
                await closer()

    async def collect(self) -> Finished:
        return (await self.collect_choices())[0]

    async def collect_choices(self) -> list[Finished]:
        """Every choice, whole, in index order."""
        choices: dict[int, Finished] = {}
        async for out in self:
            f = choices.setdefault(out.index, Finished("", [], None, out.prompt_tokens, 0, out.index))
            f.text += out.new_text
            f.token_ids.extend(out.new_token_ids)
            f.logprobs.extend(out.new_logprobs)
            f.prompt_logprobs = out.prompt_logprobs if out.prompt_logprobs is not None else f.prompt_logprobs
            f.finish_reason, f.completion_tokens = out.finish_reason, out.completion_tokens
        if not choices:
            raise APIError(500, "the engine ended the request without output")
        return [choices[i] for i in sorted(choices)]


async def start(engine: AsyncEngine, prompt_ids: list[int], params: SamplingParams, request_id: str) -> Generation:
    """Submit a request and wait for its first output; a full waiting queue is a 429 with Retry-After."""
    outputs: Any = engine.generate(prompt_ids, params, request_id)
    if inspect.isawaitable(outputs):
        outputs = await outputs
    try:
        first = await anext(outputs)
    except QueueFull:
        raise APIError(
            429,
            "the server is at capacity (its waiting queue is full); retry later",
            code="queue_full",
            retry_after=RETRY_AFTER_SECONDS,
        ) from None
    except UnknownAdapter as e:  # unloaded between the handler's check and the engine's
        raise APIError(404, str(e), param="model", code="model_not_found") from None
    except EngineClosed:
        raise APIError(503, "the server is shutting down; retry on another replica", retry_after=5) from None
    except ValueError as e:  # the engine's own check of the request, "<field>: <what is wrong>"
        message = str(e)
        raise APIError(400, message, param=message.split(":", 1)[0] if ":" in message else None) from None
    except StopAsyncIteration:
        first = None
    except BaseException:
        closer = getattr(outputs, "aclose", None)
        if closer is not None:
            with anyio.CancelScope(shield=True):
                await closer()
        raise
    return Generation(outputs, first)


async def until_disconnect(request: Request, work: Callable[[], Awaitable[T]]) -> T | None:
    """Run `work` unless the client goes away first; then cancel it (which aborts its engine request)."""
    task = asyncio.ensure_future(work())

    async def disconnected() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        return None
    return task.result()
