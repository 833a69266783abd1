"""Cascades: a model name the gateway answers from the cheapest model that is sure of its answer.

A deployment's `spec.gateway.cascade` names the cascade, the served names to escalate to (cheapest first) and the
escalation signal. The gateway asks the deployment itself first, with token logprobs on; an answer whose mean token
logprob (or first token's) is below the threshold, or that fails the validator (a regex the whole answer must
match, or a JSON Schema), goes to the next model, and so on; the last model's answer is returned whatever it says.
A model that may be escalated from is always asked for a whole answer: the signal needs all of it. A streamed request
(`stream: true`) therefore gets a kept answer as the events of a stream of it, all at once when it is decided, and an
escalated one streamed token by token from the last model. `infleet cascade calibrate` picks the threshold from a
labelled sample.

This module is the decision alone (torch-free, no I/O); gateway/app.py sends the requests.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema

from infleet.api import sse

log = logging.getLogger("infleet.gateway.cascade")

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
PATHS = (CHAT, COMPLETIONS)
MODEL_HEADER = "x-infleet-cascade-model"  # the served name that answered
ESCALATIONS_HEADER = "x-infleet-cascade-escalations"  # how many models were asked before it


@dataclass(frozen=True)
class Rule:
    name: str
    escalate_to: tuple[str, ...]
    min_mean_logprob: float | None = None
    min_first_token_logprob: float | None = None
    regex: str | None = None
    json_schema: str | None = None  # as JSON text: the rule stays hashable

    @classmethod
    def from_spec(cls, spec: Any) -> Rule | None:
        """From `spec.gateway.cascade` as the API server stored it (validated there); None when absent or unusable."""
        if not isinstance(spec, Mapping) or not spec.get("name") or not spec.get("escalateTo"):
            return None
        validator = spec.get("validator") or {}
        try:
            regex = validator.get("regex")
            if regex is not None:
                re.compile(regex)
            schema = validator.get("jsonSchema")
            return cls(
                str(spec["name"]),
                tuple(str(n) for n in spec["escalateTo"]),
                _number(spec.get("minMeanLogprob")),
                _number(spec.get("minFirstTokenLogprob")),
                regex,
                json.dumps(schema, sort_keys=True) if schema is not None else None,
            )
        except (re.error, TypeError, ValueError) as e:
            log.warning("cascade %r ignored: %s", spec.get("name"), e)
            return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def ask_for_logprobs(path: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The request with token logprobs on (what the signal reads)."""
    if path == CHAT:
        return {**payload, "logprobs": True}
    current = payload.get("logprobs")
    return {**payload, "logprobs": current if isinstance(current, int) and current >= 1 else 1}


def whole(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The request for a whole answer: without `stream` and its options."""
    return {k: v for k, v in payload.items() if k not in ("stream", "stream_options")}


def as_stream(path: str, answer: Mapping[str, Any], include_usage: bool) -> bytes:
    """A whole answer as the SSE events a stream of it would have sent: each choice's whole message (or text) in one
    chunk with its finish reason, the usage chunk when the client asked for it (`stream_options.include_usage`),
    then `[DONE]`."""
    head = {k: answer.get(k) for k in ("id", "created", "model")}
    head["object"] = "chat.completion.chunk" if path == CHAT else "text_completion"
    events = []
    for c in answer.get("choices") or []:
        if not isinstance(c, Mapping):
            continue
        choice = {"index": c.get("index", 0), "logprobs": c.get("logprobs"), "finish_reason": c.get("finish_reason")}
        if path == CHAT:
            delta = dict(c.get("message") or {})
            if isinstance(calls := delta.get("tool_calls"), list):  # a stream's tool calls carry their index
                delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(calls)]
            choice["delta"] = delta
        else:
            choice["text"] = c.get("text") or ""
        events.append(sse.event({**head, "choices": [choice], **({"usage": None} if include_usage else {})}))
    if include_usage and isinstance(answer.get("usage"), Mapping):
        events.append(sse.event({**head, "choices": [], "usage": answer["usage"]}))
    return b"".join(events) + sse.DONE


def hide_logprobs(path: str, payload: Mapping[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """The answer as the client asked for it: without the logprobs the gateway added."""
    asked = payload.get("logprobs") if path == CHAT else payload.get("logprobs") is not None
    if asked:
        return answer
    choices = [{**c, "logprobs": None} for c in answer.get("choices") or [] if isinstance(c, dict)]
    return {**answer, "choices": choices}


def text_of(path: str, answer: Mapping[str, Any]) -> str:
    choice = (answer.get("choices") or [{}])[0]
    if path == CHAT:
        return str((choice.get("message") or {}).get("content") or "")
    return str(choice.get("text") or "")


def logprobs_of(path: str, answer: Mapping[str, Any]) -> list[float]:
    """The first choice's token logprobs, in order."""
    found = (answer.get("choices") or [{}])[0].get("logprobs") or {}
    if path == CHAT:
        values = [t.get("logprob") for t in found.get("content") or [] if isinstance(t, dict)]
    else:
        values = list(found.get("token_logprobs") or [])
    return [float(v) for v in values if isinstance(v, int | float)]


def why_escalate(rule: Rule, path: str, answer: Mapping[str, Any]) -> str | None:
    """Why this answer goes to the next model (a short reason, also the metric's label), or None to return it."""
    logprobs = logprobs_of(path, answer)
    if (rule.min_mean_logprob is not None or rule.min_first_token_logprob is not None) and not logprobs:
        return "no_logprobs"
    if rule.min_first_token_logprob is not None and logprobs[0] < rule.min_first_token_logprob:
        return "first_token_logprob"
    if rule.min_mean_logprob is not None and sum(logprobs) / len(logprobs) < rule.min_mean_logprob:
        return "mean_logprob"
    text = text_of(path, answer)
    if rule.regex is not None and re.fullmatch(rule.regex, text, flags=re.DOTALL) is None:
        return "regex"
    if rule.json_schema is not None and not _valid_json(text, json.loads(rule.json_schema)):
        return "json_schema"
    return None


def _valid_json(text: str, schema: Mapping[str, Any]) -> bool:
    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError, jsonschema.SchemaError):
        return False
    return True
