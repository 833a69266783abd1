"""OpenAI request bodies: what the server accepts, with a 400 naming the field for anything it does not.

Ranges are OpenAI's (n 1..128, penalties -2..2, logit_bias -100..100, top_logprobs 0..20, completions logprobs
0..5) plus vLLM's `repetition_penalty` (0, 2]. Fields the engine cannot honour (suffix, best_of > 1, ...)
are refused rather than ignored, so a client never silently gets something other than it asked for. Unknown fields
are ignored, as OpenAI's API does.
"""

from __future__ import annotations

import json
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from infleet.api.metrics import (
    FEATURE_ECHO,
    FEATURE_LOGIT_BIAS,
    FEATURE_LOGPROBS,
    FEATURE_N,
    FEATURE_PENALTIES,
    FEATURE_SEED,
    FEATURE_STREAM_USAGE,
)
from infleet.runtime.engine.sampler import MAX_LOGPROBS, MAX_N
from infleet.runtime.engine.structured import GrammarSpec
from infleet.runtime.server.errors import APIError, bad_request, from_validation_error
from infleet.runtime.server.tools import Tool, ToolChoice, as_text

MAX_COMPLETION_LOGPROBS = 5  # OpenAI's bound for the legacy completions endpoint

Model = TypeVar("Model", bound=BaseModel)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    json_schema: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """`text`, `json_object` (any JSON object) or `json_schema` (JSON valid against the schema; constrained
    whether `strict` is set or not)."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("json_schema: is required when type is 'json_schema'")
        return self

    def grammar(self) -> GrammarSpec | None:
        if self.type == "json_object":
            return GrammarSpec("json_object")
        if self.type == "json_schema":
            assert self.json_schema is not None
            return GrammarSpec("json_schema", self.json_schema.json_schema)
        return None


class SamplingFields(BaseModel):
    """Fields shared by completions and chat completions, with the ranges the sampler supports."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(default=None, gt=0)
    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    n: int = Field(default=1, ge=1, le=MAX_N)
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] = Field(default_factory=list)
    ignore_eos: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=2.0)  # vLLM's extension
    logit_bias: dict[str, float] | None = None

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for token, bias in (v or {}).items():
            if not token.isdigit():
                raise ValueError(f"keys must be token ids (strings of digits), got {token!r}")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"values must be between -100 and 100, got {bias!r} for token {token}")
        return v

    @field_validator("seed")
    @classmethod
    def _seed(cls, v: int | None) -> int | None:
        if v is not None and not 0 <= v < 2**63 - MAX_N:  # each choice i draws with seed + i
            raise ValueError(f"must be an integer in [0, 2**63 - {MAX_N})")
        return v

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, v: str | list[str] | None) -> str | list[str] | None:
        for s in [v] if isinstance(v, str) else v or []:
            if not s:
                raise ValueError("stop strings must not be empty")
        return v

    @field_validator("stop_token_ids")
    @classmethod
    def _token_ids(cls, v: list[int]) -> list[int]:
        if any(t < 0 for t in v):
            raise ValueError("token ids must be >= 0")
        return v

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only allowed when stream is true")
        return self

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def logprobs_requested(self) -> int | None:
        """Top log-probabilities per generated token (None: none at all); each endpoint spells it its own way."""
        return None

    def features(self) -> list[str]:
        """The optional features this request uses, as the per-request metrics count them."""
        used = {
            FEATURE_N: self.n > 1,
            FEATURE_LOGPROBS: self.logprobs_requested is not None,
            FEATURE_PENALTIES: bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0),
            FEATURE_LOGIT_BIAS: bool(self.logit_bias),
            FEATURE_SEED: self.seed is not None,
            FEATURE_STREAM_USAGE: self.include_usage,
        }
        return [name for name, on in used.items() if on]

    def sampling_kwargs(self, max_tokens: int) -> dict[str, Any]:
        """Keyword arguments for the engine's `SamplingParams`."""
        return {
            "n": self.n,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "repetition_penalty": self.repetition_penalty,
            "logit_bias": {int(t): b for t, b in (self.logit_bias or {}).items()},
            "logprobs": self.logprobs_requested,
            "max_tokens": max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
            "stop": self.stop_list(),
            "stop_token_ids": list(self.stop_token_ids),
            "ignore_eos": self.ignore_eos,
        }


class CompletionRequest(SamplingFields):
    prompt: str | list[int]  # one prompt: text or token ids
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_prompt(cls, v: Any) -> Any:
        """OpenAI also takes a list of prompts; a list of one is unwrapped, more are refused (one prompt a request:
        its choices are `n`)."""
        if isinstance(v, list) and v and isinstance(v[0], str | list):
            if len(v) != 1:
                raise ValueError("only one prompt per request is supported")
            v = v[0]
        if not v:
            raise ValueError("must not be empty")
        if isinstance(v, list) and any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in v):
            raise ValueError("token ids must be integers >= 0")
        return v

    @field_validator("suffix")
    @classmethod
    def _unsupported(cls, v: Any) -> Any:
        if v:
            raise ValueError("not supported")
        return v

    @field_validator("best_of")
    @classmethod
    def _best_of(cls, v: int | None) -> int | None:
        if v not in (None, 1):
            raise ValueError("only best_of=1 is supported; use n for several choices")
        return v

    @property
    def logprobs_requested(self) -> int | None:
        return self.logprobs

    def features(self) -> list[str]:
        return [*super().features(), *([FEATURE_ECHO] if self.echo else [])]

    def sampling_kwargs(self, max_tokens: int) -> dict[str, Any]:
        """With `echo` and `logprobs`, the prompt's tokens get theirs too."""
        prompt_logprobs = self.logprobs if self.echo else None
        return {**super().sampling_kwargs(max_tokens), "prompt_logprobs": prompt_logprobs}


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # a tool's answer to one of them

    def text(self) -> str:
        if isinstance(self.content, list):
            text = "".join(part.text for part in self.content)
        else:
            text = self.content or ""
        calls = [as_text(c) for c in self.tool_calls or []]
        return "\n".join([text, *calls] if text else calls)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, gt=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs: logprobs must be true when top_logprobs is given")
        return self

    @property
    def logprobs_requested(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def chat_messages(self) -> list[dict[str, str]]:
        """Messages as the chat template expects them: role and plain-text content."""
        return [{"role": m.role, "content": m.text()} for m in self.messages]


def parse_json(body: bytes) -> Any:
    if not body.strip():
        raise bad_request("the request body is empty; expected a JSON object")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad_request(f"the request body is not valid JSON: {e}") from None


def parse(model: type[Model], body: bytes) -> Model:
    """A request model from raw body bytes; every failure is a 400 naming the field."""
    data = parse_json(body)
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise from_validation_error(e) from None


def resolve_max_tokens(requested: int | None, default: int | None, prompt_len: int, max_model_len: int) -> int:
    """The generation budget; a prompt or request that cannot fit the context is a 400 saying by how much."""
    if prompt_len >= max_model_len:
        raise APIError(
            400,
            f"prompt: the prompt is {prompt_len} tokens but the model's context is {max_model_len} tokens",
            param="prompt",
            code="context_length_exceeded",
        )
    room = max_model_len - prompt_len
    max_tokens = requested if requested is not None else (default if default is not None else room)
    if max_tokens > room:
        raise APIError(
            400,
            f"max_tokens: this model's context is {max_model_len} tokens, but {prompt_len + max_tokens} were requested "
            f"({prompt_len} in the prompt, {max_tokens} to generate); lower max_tokens to at most {room}",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return max_tokens
