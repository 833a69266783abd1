"""Open Inference Protocol v2 tensors in JSON and in Triton's binary tensor data extension.

A binary request or response is one JSON header followed by raw tensor bytes; the header's byte length travels in
the `Inference-Header-Content-Length` HTTP header. Each tensor whose `parameters.binary_data_size` is set takes that
many bytes, in the order the tensors are listed. Numbers are little-endian; a BYTES element is a 4-byte
little-endian length followed by that many bytes. `tritonclient.http` always asks for binary outputs.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

HEADER_LENGTH = "Inference-Header-Content-Length"

# v2 datatype -> numpy little-endian dtype (BYTES is handled apart; BF16 has no numpy dtype)
NUMERIC_DTYPES: dict[str, str] = {
    "BOOL": "?",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
DATATYPES = (*NUMERIC_DTYPES, "BYTES")


class TensorError(ValueError):
    """A request whose tensors cannot be read; the message names the tensor and the problem."""


@dataclass
class Tensor:
    """One named tensor; `data` is flat, row-major: bytes for BYTES, bool/int/float otherwise."""

    name: str
    datatype: str
    shape: list[int]
    data: list[Any]
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, Tensor]
    parameters: dict[str, Any]
    outputs: list[dict[str, Any]]  # the requested outputs as sent: {"name", "parameters": {"binary_data": bool}}


def pack_bytes(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def unpack_bytes(raw: bytes, count: int, name: str) -> list[bytes]:
    out: list[bytes] = []
    offset = 0
    for i in range(count):
        if offset + 4 > len(raw):
            raise TensorError(f"{name}: binary BYTES data ends inside the length prefix of element {i}")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise TensorError(
                f"{name}: binary BYTES element {i} claims {length} bytes but only {len(raw) - offset} remain"
            )
        out.append(raw[offset : offset + length])
        offset += length
    if offset != len(raw):
        raise TensorError(f"{name}: {len(raw) - offset} bytes left over after {count} BYTES elements")
    return out


def element_count(shape: list[int]) -> int:
    return math.prod(shape)


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list):
        return [x for item in data for x in _flatten(item)]
    return [data]


def _check_json_element(name: str, datatype: str, value: Any) -> Any:
    if datatype == "BYTES":
        if not isinstance(value, str):
            raise TensorError(f"{name}: BYTES data in JSON must be strings, got {type(value).__name__}")
        return value.encode()
    if datatype == "BOOL":
        if not isinstance(value, bool):
            raise TensorError(f"{name}: BOOL data must be true/false, got {value!r}")
        return value
    if datatype.startswith(("INT", "UINT")):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TensorError(f"{name}: {datatype} data must be integers, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TensorError(f"{name}: {datatype} data must be numbers, got {value!r}")
    return float(value)


def _read_tensor(spec: Any, binary: memoryview, offset: int) -> tuple[Tensor, int]:
    """One input tensor from its JSON description; returns it and the offset just past its binary data."""
    if not isinstance(spec, dict):
        raise TensorError("inputs: each input must be an object with name, datatype, shape")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise TensorError("inputs: an input has no name")
    datatype = spec.get("datatype")
    if datatype not in DATATYPES:
        raise TensorError(f"{name}: unknown datatype {datatype!r} (one of {', '.join(DATATYPES)})")
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise TensorError(f"{name}: shape must be a list of non-negative integers, got {shape!r}")
    parameters = spec.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise TensorError(f"{name}: parameters must be an object")
    count = element_count(shape)
    size = parameters.get("binary_data_size")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise TensorError(f"{name}: binary_data_size must be a non-negative integer, got {size!r}")
        if "data" in spec:
            raise TensorError(f"{name}: has both JSON data and binary_data_size")
        if offset + size > len(binary):
            raise TensorError(
                f"{name}: binary_data_size is {size} but only {len(binary) - offset} bytes follow the JSON header"
            )
        raw = bytes(binary[offset : offset + size])
        offset += size
        if datatype == "BYTES":
            data: list[Any] = unpack_bytes(raw, count, name)
        else:
            dtype = np.dtype(NUMERIC_DTYPES[datatype])
            if size != count * dtype.itemsize:
                raise TensorError(
                    f"{name}: shape {shape} of {datatype} needs {count * dtype.itemsize} bytes, got {size}"
                )
            data = np.frombuffer(raw, dtype=dtype).tolist()
    else:
        if "data" not in spec:
            raise TensorError(f"{name}: no data and no binary_data_size")
        data = [_check_json_element(name, datatype, v) for v in _flatten(spec["data"])]
        if len(data) != count:
            raise TensorError(f"{name}: shape {shape} holds {count} elements but data has {len(data)}")
    params = {k: v for k, v in parameters.items() if k != "binary_data_size"}
    return Tensor(name, datatype, shape, data, params), offset


def decode_request(body: bytes, header_length: int | None) -> InferRequest:
    """Parse an `/infer` body; `header_length` is the `Inference-Header-Content-Length` value, if sent."""
    if header_length is None:
        header_length = len(body)
    if header_length < 0 or header_length > len(body):
        raise TensorError(f"{HEADER_LENGTH} is {header_length} but the body has {len(body)} bytes")
    try:
        header = json.loads(body[:header_length])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TensorError(f"the request's JSON header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise TensorError("the request's JSON header must be an object")
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise TensorError("inputs: the request has no inputs")
    binary = memoryview(body)[header_length:]
    offset = 0
    tensors: dict[str, Tensor] = {}
    for spec in inputs:
        tensor, offset = _read_tensor(spec, binary, offset)
        if tensor.name in tensors:
            raise TensorError(f"{tensor.name}: input given twice")
        tensors[tensor.name] = tensor
    if offset != len(binary):
        raise TensorError(f"{len(binary) - offset} bytes after the JSON header belong to no input")
    request_id = header.get("id")
    parameters = header.get("parameters") or {}
    outputs = header.get("outputs") or []
    if not isinstance(parameters, dict):
        raise TensorError("parameters: must be an object")
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
    ):
        raise TensorError("outputs: must be a list of objects with a name")
    return InferRequest(None if request_id is None else str(request_id), tensors, parameters, outputs)


def _raw(tensor: Tensor) -> bytes:
    if tensor.datatype == "BYTES":
        return pack_bytes(tensor.data)
    return np.asarray(tensor.data, dtype=NUMERIC_DTYPES[tensor.datatype]).tobytes()


def _json_data(tensor: Tensor) -> list[Any]:
    if tensor.datatype == "BYTES":
        return [b.decode("utf-8", errors="replace") for b in tensor.data]
    return list(tensor.data)


def encode_response(header: dict[str, Any], outputs: list[Tensor], binary: set[str]) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length for `HEADER_LENGTH`."""
    described: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for t in outputs:
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        params = dict(t.parameters)
        if t.name in binary:
            raw = _raw(t)
            params["binary_data_size"] = len(raw)
            chunks.append(raw)
        else:
            entry["data"] = _json_data(t)
        if params:
            entry["parameters"] = params
        described.append(entry)
    head = json.dumps({**header, "outputs": described}, separators=(",", ":")).encode()
    if not chunks:
        return head, None
    return head + b"".join(chunks), len(head)
