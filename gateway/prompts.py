"""The text a request's prompt starts with, per API: the key prefix-affinity routing hashes.

Only reading: the gateway forwards every body byte-exact, so these helpers never fail a request; they return
None when a body has no recognisable prompt (the router then falls back to least outstanding).
"""

from __future__ import annotations

import json
import struct
from typing import Any


def content_text(content: Any) -> str:
    """OpenAI message content: a string, or a list of parts of which the text parts count."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def openai_prompt(body: Any) -> str | None:
    """Chat messages as `role\\ncontent\\n` in turn (the order the chat template renders them), or a completion's
    first prompt (token ids as a comma-separated string)."""
    if not isinstance(body, dict):
        return None
    messages = body.get("messages")
    if isinstance(messages, list):
        turns = (m for m in messages if isinstance(m, dict))
        return "".join(f"{m.get('role', '')}\n{content_text(m.get('content'))}\n" for m in turns)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        prompt = prompt[0]  # a batch: the first prompt stands for it
    if isinstance(prompt, list):
        return ",".join(str(t) for t in prompt)
    return prompt if isinstance(prompt, str) else None


def kserve_prompt(body: bytes, header_length: int | None) -> str | None:
    """`text_input` of a KServe v2 request: `/generate` JSON, or `/infer` JSON or binary tensors (Triton's
    extension: a JSON header of `header_length` bytes, then each binary input's bytes in order; a BYTES element
    is a 4-byte little-endian length and the bytes)."""
    try:
        header = json.loads(body if header_length is None else body[:header_length])
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(header, dict):
        return None
    if isinstance(header.get("text_input"), str):  # the generate extension
        return str(header["text_input"])
    inputs = header.get("inputs")
    if not isinstance(inputs, list):
        return None
    offset = header_length or 0
    for tensor in inputs:
        if not isinstance(tensor, dict):
            return None
        params = tensor.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if tensor.get("name") == "text_input":
            if isinstance(size, int) and header_length is not None:
                raw = body[offset : offset + size]
                if len(raw) < 4:
                    return None
                (n,) = struct.unpack_from("<I", raw)
                return raw[4 : 4 + n].decode("utf-8", errors="replace")
            data = tensor.get("data")
            while isinstance(data, list) and data:
                data = data[0]
            return data if isinstance(data, str) else None
        if isinstance(size, int):
            offset += size
    return None
