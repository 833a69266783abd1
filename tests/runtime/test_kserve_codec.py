"""The binary tensor codec against tritonclient's own request builder and response parser (no model, no server)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import tritonclient.http as httpclient

from infleet.runtime.server.binary_tensor import Tensor, TensorError, decode_request, encode_response, pack_bytes


def triton_body(inputs: list[httpclient.InferInput], outputs=None, **kw) -> tuple[bytes, int | None]:
    return httpclient.InferenceServerClient.generate_request_body(inputs, outputs=outputs, **kw)


def test_tritonclient_binary_request_round_trips() -> None:
    text = httpclient.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array(["héllo wörld".encode()], dtype=np.object_))
    max_tokens = httpclient.InferInput("max_tokens", [1], "INT32")
    max_tokens.set_data_from_numpy(np.array([7], dtype=np.int32))
    temperature = httpclient.InferInput("temperature", [1], "FP32")
    temperature.set_data_from_numpy(np.array([0.5], dtype=np.float32))
    stream = httpclient.InferInput("stream", [1], "BOOL")
    stream.set_data_from_numpy(np.array([False]), binary_data=False)
    body, header_length = triton_body([text, max_tokens, temperature, stream], request_id="r1")
    assert header_length is not None

    req = decode_request(body, header_length)
    assert req.id == "r1"
    assert req.inputs["text_input"].data == ["héllo wörld".encode()]
    assert req.inputs["max_tokens"].data == [7]
    assert req.inputs["temperature"].data == [0.5]
    assert req.inputs["stream"].data == [False]
    assert req.parameters == {"binary_data_output": True}


def test_json_only_request() -> None:
    body = json.dumps({"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1, 1], "data": [["hi"]]}]})
    req = decode_request(body.encode(), None)
    assert req.inputs["text_input"].data == [b"hi"]
    assert req.inputs["text_input"].shape == [1, 1]


@pytest.mark.parametrize("binary", [True, False])
def test_response_parses_in_tritonclient(binary: bool) -> None:
    outputs = [
        Tensor("text_output", "BYTES", [1], ["Paris ünïcode".encode()]),
        Tensor("num_output_tokens", "UINT32", [1], [5]),
    ]
    names = {"text_output", "num_output_tokens"} if binary else set()
    body, header_length = encode_response({"model_name": "m", "model_version": "1", "id": "x"}, outputs, names)
    assert (header_length is not None) == binary
    result = httpclient.InferenceServerClient.parse_response_body(body, header_length=header_length)
    expected = "Paris ünïcode".encode() if binary else "Paris ünïcode"  # JSON BYTES come back as str
    assert result.as_numpy("text_output").tolist() == [expected]
    assert result.as_numpy("num_output_tokens").tolist() == [5]
    assert result.get_response()["model_name"] == "m"


def binary_body(header: dict, raw: bytes) -> tuple[bytes, int]:
    head = json.dumps(header).encode()
    return head + raw, len(head)


TEXT_1 = {"name": "text_input", "datatype": "BYTES", "shape": [1]}
FP32_2 = {"name": "t", "datatype": "FP32", "shape": [2]}


@pytest.mark.parametrize(
    ("body", "header_length", "message"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"[1, 2]", None, "must be an object"),
        (b"{}", None, "no inputs"),
        (b'{"inputs": []}', 5000, "Inference-Header-Content-Length is 5000"),
        (json.dumps({"inputs": [{**TEXT_1, "datatype": "STRING", "data": ["a"]}]}).encode(), None, "unknown datatype"),
        (json.dumps({"inputs": [{**TEXT_1, "shape": [-1], "data": ["a"]}]}).encode(), None, "shape must be"),
        (json.dumps({"inputs": [{**TEXT_1, "shape": [2], "data": ["a"]}]}).encode(), None, "holds 2 elements"),
        (json.dumps({"inputs": [{**TEXT_1, "data": [3]}]}).encode(), None, "must be strings"),
        (json.dumps({"inputs": [TEXT_1]}).encode(), None, "no data"),
        (json.dumps({"inputs": [{"datatype": "BYTES", "shape": [1], "data": ["a"]}]}).encode(), None, "no name"),
        (*binary_body({"inputs": [{**TEXT_1, "parameters": {"binary_data_size": 10}}]}, b"\x05\0\0\0ab"), "only 6"),
        (*binary_body({"inputs": [{**TEXT_1, "parameters": {"binary_data_size": 6}}]}, b"\x09\0\0\0ab"), "claims 9"),
        (*binary_body({"inputs": [{**TEXT_1, "parameters": {"binary_data_size": 2}}]}, b"\x01\0"), "length prefix"),
        (*binary_body({"inputs": [{**TEXT_1, "parameters": {"binary_data_size": 6}}]}, pack_bytes([b"a", b"b"])[:6]),
         "left over"),
        (*binary_body({"inputs": [{**TEXT_1, "parameters": {"binary_data_size": 5}}]}, pack_bytes([b"a"]) + b"zz"),
         "belong to no input"),
        (*binary_body({"inputs": [{**FP32_2, "parameters": {"binary_data_size": 4}}]}, struct.pack("<f", 1.0)),
         "needs 8 bytes"),
    ],
)  # fmt: skip
def test_malformed_requests_name_the_problem(body: bytes, header_length: int | None, message: str) -> None:
    with pytest.raises(TensorError, match=message):
        decode_request(body, header_length)
