"""KServe Open Inference Protocol v2, with the tensors of Triton's vLLM backend so Triton clients work unchanged.

Inputs: `text_input` BYTES [1] (required); optional `max_tokens` INT32 [1], `temperature` FP32 [1], `stream` BOOL [1],
`sampling_parameters` BYTES [1] (a JSON object; without it the request's `parameters` are used, as Triton does),
`exclude_input_in_output` BOOL [1] (default false: like Triton, a non-streamed `text_output` repeats the prompt),
`return_finish_reason` / `return_num_input_tokens` / `return_num_output_tokens` BOOL [1].
Outputs: `text_output` BYTES [1], and when asked `finish_reason` BYTES [1], `num_input_tokens` and
`num_output_tokens` UINT32 [1]. `/infer` speaks JSON or the binary tensor extension; Triton's generate extension
(`/generate`, `/generate_stream` as SSE) speaks plain JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import infleet
from infleet.api import sse
from infleet.api.errors import kserve_error
from infleet.runtime.server.binary_tensor import HEADER_LENGTH, Tensor, TensorError, decode_request, encode_response
from infleet.runtime.server.errors import APIError, bad_request, from_validation_error
from infleet.runtime.server.generation import Generation, encode, make_params, new_request_id, start, until_disconnect
from infleet.runtime.server.openai_schemas import parse_json, resolve_max_tokens

if TYPE_CHECKING:
    from infleet.runtime.server.app import Serving

VERSION = "1"
EXTENSIONS = ["binary_tensor_data", "generate"]
DEFAULT_MAX_TOKENS = 16  # vLLM's SamplingParams default, which Triton's vLLM backend inherits

# input name -> (datatype, required)
INPUTS: dict[str, tuple[str, bool]] = {
    "text_input": ("BYTES", True),
    "max_tokens": ("INT32", False),
    "temperature": ("FP32", False),
    "stream": ("BOOL", False),
    "sampling_parameters": ("BYTES", False),
    "exclude_input_in_output": ("BOOL", False),
    "return_finish_reason": ("BOOL", False),
    "return_num_input_tokens": ("BOOL", False),
    "return_num_output_tokens": ("BOOL", False),
}
OUTPUTS: dict[str, str] = {
    "text_output": "BYTES",
    "finish_reason": "BYTES",
    "num_input_tokens": "UINT32",
    "num_output_tokens": "UINT32",
}
OUTPUTS_FLAGS = ("return_finish_reason", "return_num_input_tokens", "return_num_output_tokens")
# Triton's own request parameters, never sampling parameters
RESERVED_PARAMETERS = {"binary_data_output", "sequence_id", "sequence_start", "sequence_end", "priority", "timeout"}


class SamplingParameters(BaseModel):
    """The `sampling_parameters` JSON; values may be strings ("0.7"), as Triton's vLLM backend accepts."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(default=DEFAULT_MAX_TOKENS, gt=0)
    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=-1)  # -1 is vLLM's "off"
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] = Field(default_factory=list)
    ignore_eos: bool = False
    n: int = 1
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=2.0)

    @field_validator("n")
    @classmethod
    def _one(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported")
        return n

    def sampling_kwargs(self, max_tokens: int) -> dict[str, Any]:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return {
            "max_tokens": max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": max(self.top_k, 0),
            "seed": self.seed,
            "stop": stop,
            "stop_token_ids": list(self.stop_token_ids),
            "ignore_eos": self.ignore_eos,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "repetition_penalty": self.repetition_penalty,
        }


@dataclass
class TextRequest:
    """A v2 text-generation request, whichever wire form it came in."""

    text: str
    stream: bool = False
    exclude_input: bool = False
    sampling: dict[str, Any] = field(default_factory=dict)
    returns: set[str] = field(default_factory=set)  # extra outputs asked for


def check_model(serving: Serving, name: str, version: str | None = None) -> None:
    if name != serving.served_name:
        raise APIError(404, f"unknown model {name!r}; this server serves {serving.served_name!r}")
    if version not in (None, "", VERSION):
        raise APIError(404, f"unknown version {version!r} of model {name!r}; the only version is {VERSION!r}")


def text_request(values: dict[str, Any], request_parameters: dict[str, Any]) -> TextRequest:
    """Build from input values already checked for name, datatype and shape (scalars: str, int, float, bool)."""
    if "text_input" not in values:
        raise bad_request("text_input: missing; this model needs a BYTES [1] input named text_input")
    text = values["text_input"]
    if "sampling_parameters" in values:
        try:
            sampling = json.loads(values["sampling_parameters"])
        except json.JSONDecodeError as e:
            raise bad_request(f"sampling_parameters: not valid JSON: {e}") from None
        if not isinstance(sampling, dict):
            raise bad_request("sampling_parameters: must be a JSON object")
    else:
        sampling = {k: v for k, v in request_parameters.items() if k not in RESERVED_PARAMETERS}
    for name in ("max_tokens", "temperature"):  # the dedicated tensors win over the JSON
        if name in values:
            sampling[name] = values[name]
    returns = {name.removeprefix("return_") for name in OUTPUTS_FLAGS if values.get(name)}
    return TextRequest(
        text=text,
        stream=bool(values.get("stream", False)),
        exclude_input=bool(values.get("exclude_input_in_output", False)),
        sampling=sampling,
        returns=returns,
    )


def values_from_tensors(inputs: dict[str, Tensor]) -> dict[str, Any]:
    """Check each tensor against the model's inputs and take its single element."""
    values: dict[str, Any] = {}
    for name, tensor in inputs.items():
        if name not in INPUTS:
            raise bad_request(f"{name}: unknown input; this model's inputs are {', '.join(INPUTS)}", param=name)
        datatype = INPUTS[name][0]
        if tensor.datatype != datatype:
            raise bad_request(f"{name}: datatype must be {datatype}, got {tensor.datatype}", param=name)
        if math.prod(tensor.shape) != 1 or not tensor.shape:
            raise bad_request(f"{name}: shape must be [1], got {tensor.shape}", param=name)
        value = tensor.data[0]
        if datatype == "BYTES":
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise bad_request(f"{name}: not valid UTF-8", param=name) from None
        values[name] = value
    return values


def values_from_json(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The generate extension's JSON: top-level keys are inputs, `parameters` the request parameters."""
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise bad_request("parameters: must be an object")
    values: dict[str, Any] = {}
    for name, value in body.items():
        if name in ("id", "parameters"):
            continue
        if name not in INPUTS:
            raise bad_request(f"{name}: unknown input; this model's inputs are {', '.join(INPUTS)}", param=name)
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        datatype = INPUTS[name][0]
        if name == "sampling_parameters" and isinstance(value, dict):
            value = json.dumps(value)
        expected: tuple[type, ...] = {"BYTES": (str,), "BOOL": (bool,), "INT32": (int,), "FP32": (int, float)}[datatype]
        if not isinstance(value, expected) or (datatype != "BOOL" and isinstance(value, bool)):
            raise bad_request(f"{name}: must be a single {datatype} value, got {value!r}", param=name)
        values[name] = value
    # Triton's generate also lets sampling fields ride in `parameters`; `stream` there too
    if "stream" in parameters and "stream" not in values:
        values["stream"] = bool(parameters["stream"])
    return values, {k: v for k, v in parameters.items() if k != "stream"}


async def text_job(serving: Serving, req: TextRequest) -> TextJob:
    return TextJob(serving, req, await encode(serving.engine.tokenizer, req.text))


class TextJob:
    """One validated text-generation request: prompt ids, sampling parameters, and which outputs to return."""

    def __init__(self, serving: Serving, req: TextRequest, prompt_ids: list[int]) -> None:
        engine = serving.engine
        self.serving = serving
        self.req = req
        try:
            sampling = SamplingParameters.model_validate(req.sampling)
        except ValidationError as e:
            error = from_validation_error(e)
            raise bad_request(f"sampling_parameters.{error.message}", param=error.param) from None
        self.prompt_ids = prompt_ids
        if not self.prompt_ids:
            raise bad_request("text_input: must not be empty", param="text_input")
        max_tokens = resolve_max_tokens(sampling.max_tokens, None, len(self.prompt_ids), engine.max_model_len)
        self.params = make_params(sampling.sampling_kwargs(max_tokens), engine.max_model_len, len(self.prompt_ids))

    async def begin(self) -> Generation:
        return await start(self.serving.engine, self.prompt_ids, self.params, new_request_id("v2"))

    def outputs(self, text: str, finish_reason: str | None, prompt_tokens: int, completion_tokens: int) -> list[Tensor]:
        tensors = [Tensor("text_output", "BYTES", [1], [text.encode()])]
        if "finish_reason" in self.req.returns:
            tensors.append(Tensor("finish_reason", "BYTES", [1], [str(finish_reason).encode()]))
        if "num_input_tokens" in self.req.returns:
            tensors.append(Tensor("num_input_tokens", "UINT32", [1], [prompt_tokens]))
        if "num_output_tokens" in self.req.returns:
            tensors.append(Tensor("num_output_tokens", "UINT32", [1], [completion_tokens]))
        return tensors

    async def whole(self, request: Request) -> list[Tensor] | None:
        """Run to the end (None if the client left); the prompt leads the text unless excluded, as in Triton."""
        generation = await until_disconnect(request, self.begin)
        if generation is None:
            return None
        finished = await until_disconnect(request, generation.collect)
        if finished is None:
            return None
        text = finished.text if self.req.exclude_input else self.req.text + finished.text
        return self.outputs(text, finished.finish_reason, finished.prompt_tokens, finished.completion_tokens)


def binary_outputs(parameters: dict[str, Any], requested: list[dict[str, Any]], produced: list[Tensor]) -> set[str]:
    """Which outputs go binary: per requested output `binary_data`, else the request's `binary_data_output`."""
    default = bool(parameters.get("binary_data_output", False))
    if not requested:
        return {t.name for t in produced} if default else set()
    return {o["name"] for o in requested if (o.get("parameters") or {}).get("binary_data", default)}


async def server_metadata(request: Request) -> Response:
    return JSONResponse({"name": "infleet", "version": infleet.__version__, "extensions": EXTENSIONS})


async def live(request: Request) -> Response:
    return Response(status_code=200)


async def ready(request: Request) -> Response:
    return Response(status_code=200 if request.app.state.serving.state.accepting else 503)


async def model_metadata(request: Request) -> Response:
    serving: Serving = request.app.state.serving
    check_model(serving, request.path_params["name"], request.path_params.get("version"))
    return JSONResponse(
        {
            "name": serving.served_name,
            "versions": [VERSION],
            "platform": "infleet",
            "parameters": {"tier": serving.engine.tier},
            "inputs": [{"name": n, "datatype": d, "shape": [1], "optional": not req} for n, (d, req) in INPUTS.items()],
            "outputs": [{"name": n, "datatype": d, "shape": [1]} for n, d in OUTPUTS.items()],
        }
    )


async def model_ready(request: Request) -> Response:
    serving: Serving = request.app.state.serving
    check_model(serving, request.path_params["name"], request.path_params.get("version"))
    accepting = serving.state.accepting
    return JSONResponse({"name": serving.served_name, "ready": accepting}, status_code=200 if accepting else 503)


def header_length(request: Request) -> int | None:
    raw = request.headers.get(HEADER_LENGTH)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise bad_request(f"{HEADER_LENGTH}: must be an integer, got {raw!r}") from None


async def infer(request: Request) -> Response:
    serving: Serving = request.app.state.serving
    name = request.path_params["name"]
    check_model(serving, name, request.path_params.get("version"))
    try:
        decoded = decode_request(await request.body(), header_length(request))
    except TensorError as e:
        raise bad_request(str(e)) from None
    req = text_request(values_from_tensors(decoded.inputs), decoded.parameters)
    if req.stream:
        raise bad_request(
            f"stream: /infer returns one response; stream with POST /v2/models/{name}/generate_stream", param="stream"
        )
    for wanted in decoded.outputs:
        if wanted["name"] not in OUTPUTS:
            raise bad_request(f"outputs: unknown output {wanted['name']!r}; this model's are {', '.join(OUTPUTS)}")
        if wanted["name"] != "text_output":
            req.returns.add(wanted["name"])
    job = await text_job(serving, req)
    produced = await job.whole(request)
    if produced is None:
        return Response(status_code=499)
    if decoded.outputs:
        wanted_names = {o["name"] for o in decoded.outputs}
        produced = [t for t in produced if t.name in wanted_names]
    header: dict[str, Any] = {"model_name": serving.served_name, "model_version": VERSION}
    if decoded.id is not None:
        header["id"] = decoded.id
    body, length = encode_response(header, produced, binary_outputs(decoded.parameters, decoded.outputs, produced))
    if length is None:
        return Response(body, media_type="application/json")
    return Response(body, media_type="application/octet-stream", headers={HEADER_LENGTH: str(length)})


def generate_body(request_json: Any) -> TextRequest:
    if not isinstance(request_json, dict):
        raise bad_request("the request body must be a JSON object")
    values, parameters = values_from_json(request_json)
    return text_request(values, parameters)


def tensor_json(tensors: list[Tensor]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for t in tensors:
        value = t.data[0]
        out[t.name] = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value
    return out


async def generate(request: Request) -> Response:
    serving: Serving = request.app.state.serving
    check_model(serving, request.path_params["name"], request.path_params.get("version"))
    req = generate_body(parse_json(await request.body()))
    if req.stream:
        raise bad_request("stream: use /generate_stream to stream", param="stream")
    produced = await (await text_job(serving, req)).whole(request)
    if produced is None:
        return Response(status_code=499)
    return JSONResponse({"model_name": serving.served_name, "model_version": VERSION, **tensor_json(produced)})


async def generate_stream(request: Request) -> Response:
    serving: Serving = request.app.state.serving
    check_model(serving, request.path_params["name"], request.path_params.get("version"))
    req = generate_body(parse_json(await request.body()))
    job = await text_job(serving, req)
    generation = await until_disconnect(request, job.begin)
    if generation is None:
        return Response(status_code=499)

    async def events() -> AsyncIterator[bytes]:
        head = {"model_name": serving.served_name, "model_version": VERSION}
        try:
            async for out in generation:
                if out.new_text or out.finished:
                    tensors = job.outputs(out.new_text, out.finish_reason, out.prompt_tokens, out.completion_tokens)
                    yield sse.event({**head, **tensor_json(tensors)})
        except Exception as e:
            message = e.message if isinstance(e, APIError) else f"generation failed: {e}"
            yield sse.event(kserve_error(message))

    return StreamingResponse(events(), media_type=sse.MEDIA_TYPE, headers={"Cache-Control": "no-cache"})


def routes() -> list[Route]:
    model = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    return [
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        *[Route(base, model_metadata, methods=["GET"]) for base in (model, versioned)],
        *[Route(f"{base}/ready", model_ready, methods=["GET"]) for base in (model, versioned)],
        *[Route(f"{base}/infer", infer, methods=["POST"]) for base in (model, versioned)],
        *[Route(f"{base}/generate", generate, methods=["POST"]) for base in (model, versioned)],
        *[Route(f"{base}/generate_stream", generate_stream, methods=["POST"]) for base in (model, versioned)],
    ]
