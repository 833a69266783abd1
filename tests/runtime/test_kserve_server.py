"""`tritonclient.http` (binary tensors, as Triton clients send them) and the generate extension, on a real server."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import tritonclient.http as tc
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.model

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def triton(runtime_server) -> tc.InferenceServerClient:
    return tc.InferenceServerClient(runtime_server.url.removeprefix("http://"), network_timeout=120)


def tensor(name: str, datatype: str, value, binary: bool = True) -> tc.InferInput:
    t = tc.InferInput(name, [1], datatype)
    dtype = {"BYTES": np.object_, "INT32": np.int32, "FP32": np.float32, "BOOL": bool}[datatype]
    t.set_data_from_numpy(np.array([value], dtype=dtype), binary_data=binary)
    return t


def test_health_and_metadata(triton: tc.InferenceServerClient) -> None:
    assert triton.is_server_live() and triton.is_server_ready() and triton.is_model_ready("smollm2")
    assert "binary_tensor_data" in triton.get_server_metadata()["extensions"]
    meta = triton.get_model_metadata("smollm2")
    inputs = {i["name"]: (i["datatype"], i["shape"]) for i in meta["inputs"]}
    assert inputs["text_input"] == ("BYTES", [1]) and inputs["max_tokens"] == ("INT32", [1])
    assert {o["name"]: o["datatype"] for o in meta["outputs"]}["text_output"] == "BYTES"


def test_infer_binary_bytes_in_and_out(triton: tc.InferenceServerClient, runtime_server) -> None:
    inputs = [
        tensor("text_input", "BYTES", PROMPT.encode()),
        tensor("max_tokens", "INT32", 8),
        tensor("temperature", "FP32", 0.0),
        tensor("exclude_input_in_output", "BOOL", True),
    ]
    result = triton.infer("smollm2", inputs, request_id="req-1")
    out = result.get_output("text_output")
    assert out["parameters"]["binary_data_size"] > 4  # it came back as binary tensor data
    text = result.as_numpy("text_output")[0].decode()
    assert "Paris" in text
    assert result.get_response()["id"] == "req-1"
    # the same request through the OpenAI API gives the same greedy text
    same = httpx.post(
        f"{runtime_server.url}/v1/completions", json={"prompt": PROMPT, "max_tokens": 8, "temperature": 0}, timeout=120
    ).json()
    assert same["choices"][0]["text"] == text


def test_infer_prompt_prefix_json_outputs_and_extra_outputs(triton: tc.InferenceServerClient) -> None:
    params = json.dumps({"temperature": "0", "max_tokens": "5", "ignore_eos": "true"})  # strings, as Triton allows
    inputs = [
        tensor("text_input", "BYTES", PROMPT.encode(), binary=False),
        tensor("sampling_parameters", "BYTES", params.encode()),
    ]
    outputs = [
        tc.InferRequestedOutput("text_output", binary_data=False),
        tc.InferRequestedOutput("num_output_tokens"),
        tc.InferRequestedOutput("finish_reason"),
    ]
    result = triton.infer("smollm2", inputs, outputs=outputs)
    assert "data" in result.get_output("text_output")  # JSON, as asked
    text = result.as_numpy("text_output")[0]
    text = text.decode() if isinstance(text, bytes) else text
    assert text.startswith(PROMPT) and len(text) > len(PROMPT)  # Triton's default: the prompt leads the output
    assert result.as_numpy("num_output_tokens").tolist() == [5]
    assert result.as_numpy("finish_reason").tolist() == [b"length"]


def test_versioned_infer_and_errors_reach_the_client(triton: tc.InferenceServerClient) -> None:
    ok = triton.infer(
        "smollm2", [tensor("text_input", "BYTES", b"Hi"), tensor("max_tokens", "INT32", 2)], model_version="1"
    )
    assert ok.as_numpy("text_output") is not None
    with pytest.raises(InferenceServerException, match="unknown model"):
        triton.infer("llama", [tensor("text_input", "BYTES", b"Hi")])
    with pytest.raises(InferenceServerException, match="max_tokens: datatype must be INT32, got INT64"):
        bad = tc.InferInput("max_tokens", [1], "INT64")
        bad.set_data_from_numpy(np.array([3], dtype=np.int64))
        triton.infer("smollm2", [tensor("text_input", "BYTES", b"Hi"), bad])


def test_generate_extension(runtime_server) -> None:
    url = f"{runtime_server.url}/v2/models/smollm2"
    body = {"text_input": PROMPT, "max_tokens": 8, "parameters": {"temperature": 0}, "exclude_input_in_output": True}
    whole = httpx.post(f"{url}/generate", json=body, timeout=120).json()
    assert "Paris" in whole["text_output"] and whole["model_name"] == "smollm2"
    with httpx.stream("POST", f"{url}/generate_stream", json=body, timeout=120) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert "".join(e["text_output"] for e in events) == whole["text_output"]
