"""vLLM's adapter API: `POST /v1/load_lora_adapter {"lora_name", "lora_path"}` and `POST /v1/unload_lora_adapter
{"lora_name"}`. A loaded adapter is served as its own model name (listed by `/v1/models` with its `parent`);
`lora_path` is a directory, a file:// URI, or a remote URI the model fetcher pulls into `--model-cache`, at the
optional `revision` (infleet's addition: the operator loads `spec.adapters` with it).
Unloading takes the name away at once; requests already running with the adapter finish with it."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from infleet.api import adapters as adapter_api
from infleet.runtime.lora.adapter import LoRAError
from infleet.runtime.lora.manager import LoRAManager, UnknownAdapter
from infleet.runtime.server.errors import APIError
from infleet.runtime.server.openai_schemas import parse

if TYPE_CHECKING:
    from infleet.runtime.server.app import Serving


class LoadLoRA(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lora_name: str = Field(min_length=1, max_length=253)
    lora_path: str = Field(min_length=1)
    revision: str | None = Field(default=None, min_length=1, max_length=255)


class UnloadLoRA(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lora_name: str = Field(min_length=1)


def manager(serving: Serving) -> LoRAManager:
    if serving.engine.lora is None:
        raise APIError(400, "LoRA adapters are off on this server; start it with --enable-lora")
    return serving.engine.lora


async def load(request: Request) -> Response:
    serving: Serving = request.app.state.serving
    body = parse(LoadLoRA, await request.body())
    lora = manager(serving)
    if body.lora_name == serving.served_name:
        raise APIError(400, f"lora_name: {body.lora_name!r} is the base model's name", param="lora_name")
    try:  # reading (or fetching) the files must not stall the streams the event loop serves
        await asyncio.to_thread(lora.load, body.lora_name, body.lora_path, body.revision)
    except LoRAError as e:
        param = next((p for p in ("lora_name", "revision") if str(e).startswith(p)), "lora_path")
        raise APIError(400, str(e), param=param) from None
    serving.metrics.adapter_loaded(body.lora_name)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")


async def unload(request: Request) -> Response:
    serving: Serving = request.app.state.serving
    body = parse(UnloadLoRA, await request.body())
    try:
        manager(serving).unload(body.lora_name)
    except UnknownAdapter as e:
        raise APIError(404, str(e), param="lora_name", code="model_not_found") from None
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")


def routes() -> list[Route]:
    return [
        Route(adapter_api.LOAD_PATH, load, methods=["POST"]),
        Route(adapter_api.UNLOAD_PATH, unload, methods=["POST"]),
    ]
