"""OpenAI-compatible endpoints: `/v1/models`, `/v1/completions`, `/v1/chat/completions` (JSON or SSE streams).

Several choices (`n`) come back in one response, each with its `index`; in a stream their chunks interleave as the
engine produces them. Log-probabilities are rendered in each endpoint's own shape: completions' parallel lists
(`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`, offsets counted in the choice's returned text) and
chat's `content` list of `{token, logprob, bytes, top_logprobs}`. A token's text is its own decoding, so a token
that holds part of a multi-byte character reads as U+FFFD.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from infleet.api import sse
from infleet.runtime.engine.engine import RequestOutput
from infleet.runtime.engine.sampler import TokenLogprob
from infleet.runtime.engine.structured import GrammarError, GrammarSpec
from infleet.runtime.server import tools
from infleet.runtime.server.errors import APIError
from infleet.runtime.server.generation import (
    Finished,
    Generation,
    encode,
    make_params,
    new_request_id,
    start,
    until_disconnect,
    usage,
)
from infleet.runtime.server.openai_schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    SamplingFields,
    parse,
    resolve_max_tokens,
)

if TYPE_CHECKING:
    from infleet.runtime.server.app import Serving

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's legacy completions default; chat defaults to the rest of the context


def check_model(serving: Serving, model: str | None) -> str:
    """The model name the request runs under: the served name or a loaded LoRA adapter's; any other requested
    model is a 404 (no model named: the served one)."""
    if model is None or model == serving.served_name:
        return serving.served_name
    lora = serving.engine.lora
    if lora is not None and lora.has(model):
        return model
    adapters = "" if lora is None else "".join(f", {a.name!r}" for a in lora.adapters())
    raise APIError(
        404,
        f"model: the model {model!r} does not exist here; this server serves {serving.served_name!r}{adapters}",
        param="model",
        code="model_not_found",
    )


async def list_models(request: Request) -> Response:
    serving: Serving = request.app.state.serving
    card: dict[str, Any] = {
        "id": serving.served_name,
        "object": "model",
        "created": serving.created,
        "owned_by": "infleet",
        "max_model_len": serving.engine.max_model_len,
        "tier": serving.engine.tier,
        "quantization": serving.quantization(),
        "execution": serving.engine.execution,  # device, compute dtype, kernels actually in use
    }
    adapters = [] if serving.engine.lora is None else serving.engine.lora.adapters()
    cards = [card] + [
        {
            "id": a.name,
            "object": "model",
            "created": serving.created,
            "owned_by": "infleet",
            "root": a.source,  # vLLM's fields: where the adapter came from, and the model it adapts
            "parent": serving.served_name,
            "max_model_len": serving.engine.max_model_len,
            "lora_rank": a.weights.rank,
            "revision": a.revision,  # infleet's: the revision of a remote root (None: its default)
        }
        for a in adapters
    ]
    return JSONResponse({"object": "list", "data": cards})


class Job:
    """One validated OpenAI request, ready to run: its id, the prompt ids and sampling parameters."""

    def __init__(
        self, serving: Serving, body: SamplingFields, prompt_ids: list[int], default_max: int | None, id_prefix: str
    ) -> None:
        self.serving = serving
        self.body = body
        self.model = check_model(serving, body.model)
        self.prompt_ids = prompt_ids
        engine = serving.engine
        max_tokens = resolve_max_tokens(body.requested_max_tokens, default_max, len(prompt_ids), engine.max_model_len)
        self.params = make_params(body.sampling_kwargs(max_tokens), engine.max_model_len, len(prompt_ids))
        self.params.adapter = None if self.model == serving.served_name else self.model
        self.request_id = new_request_id(id_prefix)
        self.created = int(time.time())
        self.offsets: dict[int, int] = {}  # streaming: each choice's text length so far (completions' text_offset)

    async def constrain(self, spec: GrammarSpec | None, param: str, kind: str) -> None:
        """Compile the request's grammar (off the event loop) into its sampling parameters; count the request."""
        if spec is None:
            return
        if self.params.ignore_eos:
            raise APIError(
                400, f"ignore_eos: cannot be combined with {param}: the grammar ends the output", param=param
            )
        try:
            engine = self.serving.engine  # the first use builds the grammar engine: on the thread too
            self.params.grammar = await asyncio.to_thread(lambda: engine.grammars.compile(spec))
        except GrammarError as e:
            raise APIError(400, f"{param}: {e}", param=param) from None
        self.serving.metrics.structured_output(kind)

    async def submit(self) -> Generation:
        generation = await start(self.serving.engine, self.prompt_ids, self.params, self.request_id)
        self.serving.metrics.request_features(self.body.features())  # accepted: counted once, whatever follows
        return generation

    def token_text(self, token_id: int) -> str:
        return str(self.serving.engine.tokenizer.decode([token_id], skip_special_tokens=False))

    def header(self, object_name: str) -> dict[str, Any]:
        return {"id": self.request_id, "object": object_name, "created": self.created, "model": self.model}


async def respond_json(
    request: Request, job: Job, object_name: str, choice: Callable[[Job, Finished], dict[str, Any]]
) -> Response:
    """Run the request to the end, then answer in one JSON body; a client that leaves cancels it."""
    generation = await until_disconnect(request, job.submit)
    finished = None if generation is None else await until_disconnect(request, generation.collect_choices)
    if finished is None:
        return Response(status_code=499)  # the client left; nobody reads this
    counts = usage(finished[0].prompt_tokens, sum(f.completion_tokens for f in finished))
    return JSONResponse({**job.header(object_name), "choices": [choice(job, f) for f in finished], "usage": counts})


async def respond_stream(
    request: Request, job: Job, object_name: str, delta: Callable[[Job, RequestOutput, bool], dict[str, Any] | None]
) -> Response:
    """Start the request (a full queue is still a 429 here, before any byte), then stream its deltas as SSE."""
    generation = await until_disconnect(request, job.submit)
    if generation is None:
        return Response(status_code=499)
    chunks = sse_chunks(generation, job.header(object_name), job.body.include_usage, lambda o, f: delta(job, o, f))
    return StreamingResponse(chunks, media_type=sse.MEDIA_TYPE, headers={"Cache-Control": "no-cache"})


async def sse_chunks(
    outputs: AsyncIterable[RequestOutput],
    head: dict[str, Any],
    include_usage: bool,
    choice: Callable[[RequestOutput, bool], dict[str, Any] | None],
) -> AsyncIterator[bytes]:
    """SSE chunks, one per choice's delta; a failure mid-stream is sent as an `error` event, since the 200 is
    already on the wire. With `include_usage`, a last chunk has the usage of all choices together."""
    completion: dict[int, int] = {}  # choice index -> its tokens so far
    prompt_tokens = 0
    try:
        async for out in outputs:
            first = out.index not in completion
            completion[out.index] = out.completion_tokens
            prompt_tokens = out.prompt_tokens
            if not out.new_text and not out.new_logprobs and not out.finished and not first:
                continue
            delta = choice(out, first)
            if delta is None:  # held back (tool calls are parsed once the text is whole)
                continue
            event: dict[str, Any] = {**head, "choices": [delta]}
            if include_usage:
                event["usage"] = None
            yield sse.event(event)
        if include_usage and completion:
            yield sse.event({**head, "choices": [], "usage": usage(prompt_tokens, sum(completion.values()))})
    except APIError as e:
        yield sse.event(e.openai_body())
    except Exception as e:  # the client must hear about it; the engine request is already aborted
        yield sse.event(APIError(500, f"generation failed: {e}").openai_body())
    yield sse.DONE


async def completions(request: Request) -> Response:
    serving: Serving = request.app.state.serving
    body = parse(CompletionRequest, await request.body())
    check_model(serving, body.model)  # before any tokenizing
    job = Job(serving, body, await completion_prompt(serving, body), COMPLETION_DEFAULT_MAX_TOKENS, "cmpl")
    if body.response_format is not None:
        await job.constrain(body.response_format.grammar(), "response_format", body.response_format.type)
    if body.stream:
        return await respond_stream(request, job, "text_completion", completion_delta)
    return await respond_json(request, job, "text_completion", completion_choice)


async def completion_prompt(serving: Serving, body: CompletionRequest) -> list[int]:
    """The prompt's token ids: given as ids (checked against the vocabulary) or as text (encoded)."""
    tokenizer = serving.engine.tokenizer
    if isinstance(body.prompt, list):
        prompt_ids = list(body.prompt)
        vocab = getattr(tokenizer, "vocab_size", None)
        if vocab is not None and max(prompt_ids) >= vocab:
            raise APIError(
                400, f"prompt: token id {max(prompt_ids)} is outside the vocabulary of {vocab}", param="prompt"
            )
        return prompt_ids
    prompt_ids = await encode(tokenizer, body.prompt)
    if not prompt_ids:
        raise APIError(400, "prompt: encodes to no tokens", param="prompt")
    return prompt_ids


def echoed(job: Job, text: str, prompt_logprobs: list[TokenLogprob] | None) -> tuple[str, list[Any]]:
    """With `echo`, the prompt's text and (token id, logprob or None for the first token) pairs to lead a choice."""
    body = job.body
    if not isinstance(body, CompletionRequest) or not body.echo:
        return text, []
    prompt = body.prompt if isinstance(body.prompt, str) else job.serving.engine.tokenizer.decode(job.prompt_ids)
    if body.logprobs is None:
        return prompt + text, []
    known = prompt_logprobs or []
    return prompt + text, [(job.prompt_ids[0], None), *((lp.token_id, lp) for lp in known)]


def completion_logprobs(job: Job, entries: list[tuple[int, TokenLogprob | None]], offset: int) -> dict[str, Any]:
    """Completions' parallel lists for these tokens; `offset` is where the first one starts in the choice's text."""
    tokens = [job.token_text(token_id) for token_id, _ in entries]
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": [None if lp is None else lp.logprob for _, lp in entries],
        "top_logprobs": [None if lp is None else {job.token_text(t): v for t, v in lp.top} for _, lp in entries],
        "text_offset": offsets,
    }


def completion_choice(job: Job, f: Finished) -> dict[str, Any]:
    text, entries = echoed(job, f.text, f.prompt_logprobs)
    logprobs = None
    if job.params.logprobs is not None:
        entries += [(lp.token_id, lp) for lp in f.logprobs]
        logprobs = completion_logprobs(job, entries, 0)
    return {"index": f.index, "text": text, "logprobs": logprobs, "finish_reason": f.finish_reason}


def completion_delta(job: Job, out: RequestOutput, first: bool) -> dict[str, Any]:
    reason = out.finish_reason if out.finished else None
    text, entries = echoed(job, out.new_text, out.prompt_logprobs) if first else (out.new_text, [])
    logprobs = None
    if job.params.logprobs is not None:
        entries += [(lp.token_id, lp) for lp in out.new_logprobs]
        logprobs = completion_logprobs(job, entries, job.offsets.get(out.index, 0))
        job.offsets[out.index] = job.offsets.get(out.index, 0) + sum(len(t) for t in logprobs["tokens"])
    return {"index": out.index, "text": text, "logprobs": logprobs, "finish_reason": reason}


async def chat_completions(request: Request) -> Response:
    serving: Serving = request.app.state.serving
    body = parse(ChatCompletionRequest, await request.body())
    check_model(serving, body.model)
    tools.check(body.tools, body.tool_choice)
    calling = tools.active(body.tools, body.tool_choice)
    fmt = body.response_format.grammar() if body.response_format is not None else None
    if fmt is not None and calling:
        raise APIError(
            400,
            "response_format: cannot be combined with tools (both would shape the output); set tool_choice to "
            "'none' or leave response_format out",
            param="response_format",
        )
    if calling and body.n > 1:
        raise APIError(400, "n: only 1 choice is served with tools", param="n")
    tokenizer = serving.engine.tokenizer
    messages: list[dict[str, Any]] = body.chat_messages()
    extra: dict[str, Any] = {}
    if calling:
        assert body.tools is not None
        messages, extra = tools.render(tokenizer.chat_template, messages, body.tools)
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, **extra)
    except Exception as e:  # a template may reject a conversation (say, roles out of order)
        raise APIError(400, f"messages: the chat template rejected them: {e}", param="messages") from None
    job = Job(serving, body, await encode(tokenizer, text, add_special_tokens=False), None, "chatcmpl")
    if fmt is not None:
        assert body.response_format is not None
        await job.constrain(fmt, "response_format", body.response_format.type)
    if not calling:
        if body.stream:
            return await respond_stream(request, job, "chat.completion.chunk", chat_delta)
        return await respond_json(request, job, "chat.completion", chat_choice)
    assert body.tools is not None
    await job.constrain(tools.grammar(body.tools, body.tool_choice, body.parallel_tool_calls), "tools", "tools")
    answer = ToolAnswer(body.tools, body.tool_choice)
    if body.stream:
        return await respond_stream(request, job, "chat.completion.chunk", answer.delta)
    return await respond_json(request, job, "chat.completion", answer.choice)


def chat_logprob(job: Job, token_id: int, logprob: float) -> dict[str, Any]:
    token = job.token_text(token_id)
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def chat_logprobs(job: Job, found: list[TokenLogprob]) -> dict[str, Any] | None:
    """Chat's `logprobs` object, or None when the request did not ask for it."""
    if job.params.logprobs is None:
        return None
    content = [
        {**chat_logprob(job, lp.token_id, lp.logprob), "top_logprobs": [chat_logprob(job, t, v) for t, v in lp.top]}
        for lp in found
    ]
    return {"content": content, "refusal": None}


def chat_choice(job: Job, f: Finished) -> dict[str, Any]:
    message = {"role": "assistant", "content": f.text}
    return {
        "index": f.index,
        "message": message,
        "logprobs": chat_logprobs(job, f.logprobs),
        "finish_reason": f.finish_reason,
    }


class ToolAnswer:
    """A chat answer that may be tool calls: parsed from the whole text, so a stream holds its text back until the
    end and then sends the content or the calls in one chunk."""

    def __init__(self, tool_list: list[tools.Tool], choice: tools.ToolChoice | None) -> None:
        self.tools = tool_list
        self.tool_choice = choice
        self.text: list[str] = []
        self.logprobs: list[TokenLogprob] = []

    def _parse(self, text: str, finish_reason: str | None) -> tuple[dict[str, Any], str | None]:
        content, calls = tools.parse(text, self.tools, self.tool_choice)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = calls
        return message, "tool_calls" if calls and finish_reason == "stop" else finish_reason

    def choice(self, job: Job, f: Finished) -> dict[str, Any]:
        message, reason = self._parse(f.text, f.finish_reason)
        return {"index": 0, "message": message, "logprobs": chat_logprobs(job, f.logprobs), "finish_reason": reason}

    def delta(self, job: Job, out: RequestOutput, first: bool) -> dict[str, Any] | None:
        self.text.append(out.new_text)
        self.logprobs += out.new_logprobs
        if not out.finished:
            return (
                {"index": 0, "delta": {"role": "assistant"}, "logprobs": None, "finish_reason": None} if first else None
            )
        message, reason = self._parse("".join(self.text), out.finish_reason)
        if not first:
            del message["role"]
        if "tool_calls" in message:
            message["tool_calls"] = [{"index": i, **c} for i, c in enumerate(message["tool_calls"])]
        return {"index": 0, "delta": message, "logprobs": chat_logprobs(job, self.logprobs), "finish_reason": reason}


def chat_delta(job: Job, out: RequestOutput, first: bool) -> dict[str, Any]:
    delta: dict[str, Any] = {"role": "assistant"} if first else {}
    if out.new_text or first:
        delta["content"] = out.new_text
    reason = out.finish_reason if out.finished else None
    logprobs = chat_logprobs(job, out.new_logprobs)
    return {"index": out.index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}


def routes() -> list[Route]:
    return [
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ]
