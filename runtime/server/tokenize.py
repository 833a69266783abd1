"""`/tokenize` and `/detokenize`, as vLLM serves them: the served model's own tokenizer and chat template.

`POST /tokenize` takes a `prompt` (with `add_special_tokens`, default true) or chat `messages` (rendered with the
chat template, `add_generation_prompt` default true, `add_special_tokens` default false) and answers `count`,
`max_model_len`, `tokens` and, with `return_token_strs`, each token's text. `POST /detokenize` takes `tokens` and
answers `prompt`, their text. Clients use them to count tokens against the context before sending a request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from infleet.runtime.server.errors import APIError
from infleet.runtime.server.generation import encode
from infleet.runtime.server.openai import check_model
from infleet.runtime.server.openai_schemas import ChatMessage, parse

if TYPE_CHECKING:
    from infleet.runtime.server.app import Serving


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    add_generation_prompt: bool = True
    add_special_tokens: bool | None = None  # default: true for a prompt, false for messages (the template has them)
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    tokens: list[int]

    @field_validator("tokens")
    @classmethod
    def _ids(cls, v: list[int]) -> list[int]:
        if any(t < 0 for t in v):
            raise ValueError("token ids must be >= 0")
        return v


async def tokenize(request: Request) -> Response:
    serving: Serving = request.app.state.serving
    body = parse(TokenizeRequest, await request.body())
    check_model(serving, body.model)
    tokenizer = serving.engine.tokenizer
    if body.messages is not None:
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        try:
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=body.add_generation_prompt)
        except Exception as e:  # a template may reject a conversation (say, roles out of order)
            raise APIError(400, f"messages: the chat template rejected them: {e}", param="messages") from None
        special = bool(body.add_special_tokens)
    else:
        text, special = body.prompt or "", body.add_special_tokens is not False
    ids = await encode(tokenizer, text, add_special_tokens=special)
    strs = [tokenizer.decode([t], skip_special_tokens=False) for t in ids] if body.return_token_strs else None
    answer: dict[str, Any] = {
        "count": len(ids),
        "max_model_len": serving.engine.max_model_len,
        "tokens": ids,
        "token_strs": strs,
    }
    return JSONResponse(answer)


async def detokenize(request: Request) -> Response:
    serving: Serving = request.app.state.serving
    body = parse(DetokenizeRequest, await request.body())
    check_model(serving, body.model)
    tokenizer = serving.engine.tokenizer
    vocab = getattr(tokenizer, "vocab_size", None)
    if vocab is not None and body.tokens and max(body.tokens) >= vocab:
        raise APIError(400, f"tokens: token id {max(body.tokens)} is outside the vocabulary of {vocab}", param="tokens")
    return JSONResponse({"prompt": tokenizer.decode(body.tokens, skip_special_tokens=False)})


def routes() -> list[Route]:
    return [
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/detokenize", detokenize, methods=["POST"]),
    ]
