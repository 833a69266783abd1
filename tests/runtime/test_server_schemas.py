"""OpenAI request schemas, error shapes and SSE framing, without a model."""

from __future__ import annotations

import json

import pytest

from infleet.api import sse
from infleet.runtime.server.errors import APIError
from infleet.runtime.server.openai_schemas import ChatCompletionRequest, CompletionRequest, parse, resolve_max_tokens


def body(**fields) -> bytes:
    return json.dumps(fields).encode()


def test_completion_defaults_and_sampling_kwargs() -> None:
    req = parse(CompletionRequest, body(model="m", prompt="hi", stop="\n", top_k=5, seed=3))
    assert req.prompt == "hi" and not req.stream and not req.include_usage
    assert req.sampling_kwargs(7) == {
        "max_tokens": 7, "temperature": 1.0, "top_p": 1.0, "top_k": 5, "seed": 3, "stop": ["\n"],
        "stop_token_ids": [], "ignore_eos": False, "n": 1, "presence_penalty": 0.0, "frequency_penalty": 0.0,
        "repetition_penalty": 1.0, "logit_bias": {}, "logprobs": None, "prompt_logprobs": None,
    }  # fmt: skip
    assert req.features() == ["seed"]


def test_api_fields_reach_the_sampler_and_the_feature_counts() -> None:
    req = parse(
        CompletionRequest,
        body(prompt="hi", n=3, echo=True, logprobs=2, presence_penalty=0.5, logit_bias={"17": -100}, stream=True,
             stream_options={"include_usage": True}),
    )  # fmt: skip
    kwargs = req.sampling_kwargs(4)
    assert kwargs["n"] == 3 and kwargs["logprobs"] == 2 and kwargs["prompt_logprobs"] == 2
    assert kwargs["logit_bias"] == {17: -100.0} and kwargs["presence_penalty"] == 0.5
    assert req.features() == ["n", "logprobs", "penalties", "logit_bias", "stream_usage", "echo"]
    chat = parse(ChatCompletionRequest, body(messages=[{"role": "user", "content": "x"}], logprobs=True))
    assert chat.sampling_kwargs(4)["logprobs"] == 0  # the sampled token's own logprob, no alternatives
    chat = parse(
        ChatCompletionRequest, body(messages=[{"role": "user", "content": "x"}], logprobs=True, top_logprobs=5)
    )
    assert chat.sampling_kwargs(4)["logprobs"] == 5 and chat.features() == ["logprobs"]


def test_single_prompt_lists_are_unwrapped() -> None:
    assert parse(CompletionRequest, body(prompt=["one"])).prompt == "one"
    assert parse(CompletionRequest, body(prompt=[[1, 2, 3]])).prompt == [1, 2, 3]
    assert parse(CompletionRequest, body(prompt=[4, 5])).prompt == [4, 5]


def test_chat_flattens_text_parts_and_prefers_max_completion_tokens() -> None:
    req = parse(
        ChatCompletionRequest,
        body(
            messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
            max_tokens=5,
            max_completion_tokens=9,
            stream=True,
            stream_options={"include_usage": True},
        ),
    )
    assert req.chat_messages() == [{"role": "user", "content": "ab"}]
    assert req.requested_max_tokens == 9
    assert req.include_usage


MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("model", "raw", "message"),
    [
        (CompletionRequest, b"", "body is empty"),
        (CompletionRequest, b"{oops", "not valid JSON"),
        (CompletionRequest, b"[1]", "must be a JSON object"),
        (CompletionRequest, body(), "prompt: Field required"),
        (CompletionRequest, body(prompt=""), "prompt: must not be empty"),
        (CompletionRequest, body(prompt=["a", "b"]), "only one prompt"),
        (CompletionRequest, body(prompt=[1, -2]), "token ids must be integers >= 0"),
        (CompletionRequest, body(prompt="x", max_tokens=0), "max_tokens: Input should be greater than 0"),
        (CompletionRequest, body(prompt="x", temperature=-0.5), "temperature: Input should be greater than or equal"),
        (CompletionRequest, body(prompt="x", top_p=0), "top_p: Input should be greater than 0"),
        (CompletionRequest, body(prompt="x", top_p=1.5), "top_p: Input should be less than or equal to 1"),
        (CompletionRequest, body(prompt="x", top_k=-1), "top_k: Input should be greater than or equal to 0"),
        (CompletionRequest, body(prompt="x", n=0), "n: Input should be greater than or equal to 1"),
        (CompletionRequest, body(prompt="x", n=129), "n: Input should be less than or equal to 128"),
        (CompletionRequest, body(prompt="x", stop=["ok", ""]), "stop: stop strings must not be empty"),
        (CompletionRequest, body(prompt="x", logprobs=6), "logprobs: Input should be less than or equal to 5"),
        (CompletionRequest, body(prompt="x", logprobs=-1), "logprobs: Input should be greater than or equal to 0"),
        (CompletionRequest, body(prompt="x", presence_penalty=2.5), "presence_penalty: Input should be less than"),
        (CompletionRequest, body(prompt="x", frequency_penalty=-3), "frequency_penalty: Input should be greater"),
        (CompletionRequest, body(prompt="x", repetition_penalty=0), "repetition_penalty: Input should be greater"),
        (CompletionRequest, body(prompt="x", logit_bias={"a": 1}), "logit_bias: keys must be token ids"),
        (CompletionRequest, body(prompt="x", logit_bias={"5": 101}), "logit_bias: values must be between -100"),
        (CompletionRequest, body(prompt="x", seed=-1), "seed: must be an integer in [0, 2**63"),
        (CompletionRequest, body(prompt="x", best_of=2), "best_of: only best_of=1 is supported"),
        (CompletionRequest, body(prompt="x", suffix="y"), "suffix: not supported"),
        (CompletionRequest, body(prompt="x", stream_options={"include_usage": True}), "only allowed when stream"),
        (CompletionRequest, body(prompt="x", temperature="hot"), "temperature: Input should be a valid number"),
        (ChatCompletionRequest, body(), "messages: Field required"),
        (ChatCompletionRequest, body(messages=[]), "messages: List should have at least 1 item"),
        (ChatCompletionRequest, body(messages=[{"role": "robot", "content": "x"}]), "messages.0.role"),
        (ChatCompletionRequest, body(messages=[{"content": "x"}]), "messages.0.role: Field required"),
        (ChatCompletionRequest, body(messages=MSG, tools=[{"type": "function"}]), "tools.0.function: Field required"),
        (ChatCompletionRequest, body(messages=MSG, response_format={"type": "xml"}), "response_format.type"),
        (ChatCompletionRequest, body(messages=MSG, max_completion_tokens=-3), "max_completion_tokens"),
        (ChatCompletionRequest, body(messages=MSG, logprobs=True, top_logprobs=21), "top_logprobs: Input should be"),
        (ChatCompletionRequest, body(messages=MSG, top_logprobs=2), "top_logprobs: logprobs must be true"),
    ],
)
def test_bad_requests_are_400_naming_the_field(model: type, raw: bytes, message: str) -> None:
    with pytest.raises(APIError) as caught:
        parse(model, raw)
    assert caught.value.status == 400
    assert message in caught.value.message


def test_context_budget() -> None:
    assert resolve_max_tokens(None, None, 10, 100) == 90  # chat: the rest of the context
    assert resolve_max_tokens(None, 16, 10, 100) == 16
    with pytest.raises(APIError, match="the prompt is 100 tokens but the model's context is 100"):
        resolve_max_tokens(5, None, 100, 100)
    with pytest.raises(APIError, match="lower max_tokens to at most 90") as caught:
        resolve_max_tokens(91, None, 10, 100)
    assert caught.value.openai_body()["error"]["code"] == "context_length_exceeded"


def test_error_shapes() -> None:
    e = APIError(429, "full", code="queue_full", retry_after=2)
    assert e.openai_body() == {
        "error": {"message": "full", "type": "rate_limit_error", "param": None, "code": "queue_full"}
    }
    assert e.body("/v2/models/m/infer") == {"error": "full"}
    assert e.headers() == {"Retry-After": "2"}


def test_sse_framing() -> None:
    assert sse.event({"a": "é"}) == 'data: {"a":"é"}\n\n'.encode()
    assert sse.DONE == b"data: [DONE]\n\n"


def test_a_failure_mid_stream_becomes_an_error_event_then_done() -> None:
    import asyncio

    from infleet.runtime.engine.engine import RequestOutput
    from infleet.runtime.server.openai import sse_chunks

    async def outputs():
        yield RequestOutput("r", [1], "Hel", False, None, 3, 1)
        raise RuntimeError("engine step failed: out of memory")

    async def collect() -> list[bytes]:
        choice = lambda out, first: {"index": 0, "text": out.new_text}  # noqa: E731
        return [chunk async for chunk in sse_chunks(outputs(), {"id": "r"}, True, choice)]

    chunks = asyncio.run(collect())
    assert json.loads(chunks[0][6:]) == {"id": "r", "choices": [{"index": 0, "text": "Hel"}], "usage": None}
    error = json.loads(chunks[1][6:])["error"]
    assert error["message"] == "generation failed: engine step failed: out of memory" and error["type"]
    assert chunks[2:] == [sse.DONE]


def test_kserve_sampling_parameters_take_the_penalties() -> None:
    from pydantic import ValidationError

    from infleet.runtime.server.kserve import SamplingParameters

    sampling = SamplingParameters.model_validate({"presence_penalty": "0.5", "repetition_penalty": 1.2})
    kwargs = sampling.sampling_kwargs(4)
    assert kwargs["presence_penalty"] == 0.5 and kwargs["repetition_penalty"] == 1.2
    assert kwargs["frequency_penalty"] == 0.0
    with pytest.raises(ValidationError, match="frequency_penalty"):
        SamplingParameters.model_validate({"frequency_penalty": 3})
