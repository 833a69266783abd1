"""Every kind of bad request gets a 4xx naming the problem, and the server goes on serving."""

from __future__ import annotations

import json

import httpx
import pytest

pytestmark = pytest.mark.model

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
INFER = "/v2/models/smollm2/infer"
MSG = [{"role": "user", "content": "hi"}]
TEXT = {"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["hi"]}


def infer_body(*inputs: dict, **extra) -> dict:
    return {"inputs": list(inputs), **extra}


def binary(header: dict, raw: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + raw, {"Inference-Header-Content-Length": str(len(head))}


def inp(name: str, datatype: str, *data, shape: list[int] | None = None) -> dict:
    return {"name": name, "datatype": datatype, "shape": shape or [len(data)], "data": list(data)}


def raw_text_input(size: int) -> dict:
    return {"name": "text_input", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": size}}


SAMPLING = "sampling_parameters"
LONG = "the prompt is 1100 tokens but the model's context is"

CASES = [
    # (id, path, body (dict -> JSON, or (bytes, headers)), status, message substring)
    ("invalid-json", COMPLETIONS, (b'{"prompt": ', {}), 400, "not valid JSON"),
    ("not-an-object", CHAT, (b"[]", {}), 400, "must be a JSON object"),
    ("unknown-model", COMPLETIONS, {"model": "gpt-4", "prompt": "hi"}, 404, "'gpt-4' does not exist"),
    ("missing-prompt", COMPLETIONS, {"model": "smollm2"}, 400, "prompt: Field required"),
    ("missing-messages", CHAT, {"model": "smollm2"}, 400, "messages: Field required"),
    ("empty-messages", CHAT, {"messages": []}, 400, "messages: List should have at least 1 item"),
    ("bad-role", CHAT, {"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role"),
    ("prompt-too-long", COMPLETIONS, {"prompt": [1] * 1100}, 400, LONG),
    ("long-text-prompt", COMPLETIONS, {"prompt": "word " * 3000}, 400, "tokens but the model's context is 1024"),
    ("v2-long-text-prompt", INFER, infer_body(inp("text_input", "BYTES", "word " * 3000)), 400,
     "tokens but the model's context is 1024"),
    ("max-tokens-zero", COMPLETIONS, {"prompt": "hi", "max_tokens": 0}, 400, "max_tokens: Input should be greater"),
    ("max-tokens-negative", CHAT, {"messages": MSG, "max_tokens": -5}, 400, "max_tokens"),
    ("max-tokens-beyond-context", COMPLETIONS, {"prompt": "hi", "max_tokens": 5000}, 400, "lower max_tokens to"),
    ("temperature-negative", CHAT, {"messages": MSG, "temperature": -0.1}, 400, "temperature"),
    ("temperature-not-a-number", COMPLETIONS, {"prompt": "hi", "temperature": "warm"}, 400, "temperature"),
    ("top-p-zero", COMPLETIONS, {"prompt": "hi", "top_p": 0}, 400, "top_p"),
    ("top-p-above-one", CHAT, {"messages": MSG, "top_p": 1.01}, 400, "top_p"),
    ("top-k-negative", COMPLETIONS, {"prompt": "hi", "top_k": -3}, 400, "top_k"),
    ("n-too-many", CHAT, {"messages": MSG, "n": 129}, 400, "n: Input should be less than or equal to 128"),
    ("token-outside-vocab", COMPLETIONS, {"prompt": [10**7]}, 400, "outside the vocabulary"),
    ("seed-negative", COMPLETIONS, {"prompt": "hi", "seed": -1}, 400, "seed"),
    ("empty-stop", COMPLETIONS, {"prompt": "hi", "stop": [""]}, 400, "stop strings must not be empty"),
    ("stream-options-alone", CHAT, {"messages": MSG, "stream_options": {"include_usage": True}}, 400, "when stream"),
    ("tools", CHAT, {"messages": MSG, "tools": [{"type": "function"}]}, 400, "tools.0.function: Field required"),
    ("v2-unknown-model", "/v2/models/llama/infer", infer_body(TEXT), 404, "unknown model 'llama'"),
    ("v2-unknown-version", "/v2/models/smollm2/versions/7/infer", infer_body(TEXT), 404, "unknown version '7'"),
    ("v2-no-inputs", INFER, {"inputs": []}, 400, "no inputs"),
    ("v2-missing-text-input", INFER, infer_body(inp("max_tokens", "INT32", 3)), 400, "text_input: missing"),
    ("v2-unknown-input", INFER, infer_body(TEXT, inp("prompt", "BYTES", "x")), 400, "prompt: unknown input"),
    ("v2-wrong-datatype", INFER, infer_body(inp("text_input", "INT32", 1)), 400, "text_input: datatype must be BYTES"),
    ("v2-wrong-shape", INFER, infer_body(inp("text_input", "BYTES", "a", "b")), 400, "shape must be [1], got [2]"),
    ("v2-shape-data-mismatch", INFER, infer_body(inp("text_input", "BYTES", "a", "b", shape=[1])), 400,
     "holds 1 elements but data has 2"),
    ("v2-max-tokens-fp32", INFER, infer_body(TEXT, inp("max_tokens", "FP32", 3.0)), 400, "datatype must be INT32"),
    ("v2-bad-sampling-json", INFER, infer_body(TEXT, inp(SAMPLING, "BYTES", "{temp")), 400, "not valid JSON"),
    ("v2-bad-sampling-value", INFER, infer_body(TEXT, inp(SAMPLING, "BYTES", '{"top_p": "2"}')), 400,
     "sampling_parameters.top_p"),
    ("v2-unknown-sampling-key", INFER, infer_body(TEXT, inp(SAMPLING, "BYTES", '{"beam_width": 4}')), 400,
     "sampling_parameters.beam_width: Extra inputs are not permitted"),
    ("v2-stream-on-infer", INFER, infer_body(TEXT, inp("stream", "BOOL", True)), 400, "generate_stream"),
    ("v2-binary-truncated", INFER, binary({"inputs": [raw_text_input(50)]}, b"\x02\0\0\0hi"), 400,
     "binary_data_size is 50 but only 6 bytes follow"),
    ("v2-binary-bad-prefix", INFER, binary({"inputs": [raw_text_input(6)]}, b"\x09\0\0\0hi"), 400, "claims 9 bytes"),
    ("v2-header-length-too-big", INFER, (b'{"inputs": []}', {"Inference-Header-Content-Length": "999"}), 400,
     "Inference-Header-Content-Length is 999"),
    ("v2-header-length-garbage", INFER, (b'{"inputs": []}', {"Inference-Header-Content-Length": "ten"}), 400,
     "must be an integer"),
    ("v2-unknown-output", INFER, infer_body(TEXT, outputs=[{"name": "logits"}]), 400, "unknown output 'logits'"),
    ("v2-generate-unknown-field", "/v2/models/smollm2/generate", {"text_input": "hi", "beams": 2}, 400,
     "beams: unknown input"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "status", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(runtime_server, path: str, body, status: int, message: str) -> None:
    if isinstance(body, dict):
        r = httpx.post(runtime_server.url + path, json=body, timeout=60)
    else:
        r = httpx.post(runtime_server.url + path, content=body[0], headers=body[1], timeout=60)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    text = error if path.startswith("/v2") else error["message"]
    assert message in text
    if not path.startswith("/v2"):
        assert set(error) == {"message", "type", "param", "code"}


def test_still_serving_after_the_bad_requests(runtime_server) -> None:
    r = httpx.post(f"{runtime_server.url}{COMPLETIONS}", json={"prompt": "Hello", "max_tokens": 2}, timeout=120)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
