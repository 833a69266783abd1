"""Structured output and tool calls with the official `openai` client, against the runtime serving a tiny model with
random weights (only the grammar can make it write valid JSON), and once through the gateway."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import httpx
import jsonschema
import openai
import pydantic
import pytest
import uvicorn

from infleet.cluster.testing import wait_for
from infleet.runtime.config import EngineConfig
from infleet.runtime.engine.engine import AsyncEngine, LLMEngine
from infleet.runtime.metrics import RuntimeMetrics
from infleet.runtime.server import tools
from infleet.runtime.server.app import Serving, build_app
from infleet.runtime.server.launch import free_port

SERVED = "tiny"
MSG = [{"role": "user", "content": "Describe a person as JSON."}]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
        "score": {"type": "number"},
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "role", "tags", "score", "active"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 10},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"enum": ["UTC", "CET"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}


def serve(app: Any) -> Iterator[str]:
    """`app` on a free loopback port (uvicorn in a thread) until the generator closes."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=30, what="the server to start")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def runtime(tiny_llama: Any) -> Iterator[str]:
    model, config, tokenizer = tiny_llama
    engine = AsyncEngine(LLMEngine(model, config, tokenizer, EngineConfig(max_model_len=512, max_num_seqs=16)))
    yield from serve(build_app(Serving(engine, SERVED, RuntimeMetrics(SERVED, "bf16"))))


@pytest.fixture(scope="module")
def client(runtime: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{runtime}/v1", api_key="unused", max_retries=0, timeout=120)


def person_format(strict: bool = True) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": strict}}


def test_json_schema_always_validates_over_50_generations(client: openai.OpenAI) -> None:
    def one(seed: int) -> Any:
        return client.chat.completions.create(
            model=SERVED, messages=MSG, response_format=person_format(), temperature=1.0, seed=seed, max_tokens=120
        )

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(50)))
    docs = []
    for r in answers:
        assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
        doc = json.loads(r.choices[0].message.content)
        jsonschema.validate(doc, PERSON)
        docs.append(doc)
    assert len({d["name"] for d in docs}) > 10  # sampled, not one answer repeated


def test_each_of_n_choices_follows_the_schema(client: openai.OpenAI) -> None:
    """The choices fork after the prompt: each gets its own matcher, starting where the prompt left the grammar."""
    r = client.chat.completions.create(
        model=SERVED, messages=MSG, response_format=person_format(), temperature=1.0, seed=5, max_tokens=120, n=3
    )
    assert [c.index for c in r.choices] == [0, 1, 2]
    docs = [json.loads(c.message.content or "") for c in r.choices]
    for doc in docs:
        jsonschema.validate(doc, PERSON)
    assert len({json.dumps(d) for d in docs}) > 1  # three draws, not one copied


class Person(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=12)
    role: Literal["admin", "user", "guest"]
    active: bool


def test_client_parse_returns_its_own_pydantic_type(client: openai.OpenAI) -> None:
    r = client.chat.completions.parse(model=SERVED, messages=MSG, response_format=Person, temperature=0.7, seed=3)
    assert isinstance(r.choices[0].message.parsed, Person)


def test_completions_json_object_and_stream(client: openai.OpenAI) -> None:
    fmt = {"response_format": person_format()}
    whole = client.completions.create(model=SERVED, prompt="JSON:", max_tokens=120, temperature=0, extra_body=fmt)
    jsonschema.validate(json.loads(whole.choices[0].text), PERSON)
    chunks = client.completions.create(
        model=SERVED, prompt="JSON:", max_tokens=120, temperature=0, extra_body=fmt, stream=True
    )
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    obj = client.chat.completions.create(
        model=SERVED, messages=MSG, response_format={"type": "json_object"}, temperature=0, max_tokens=40
    )
    text = obj.choices[0].message.content
    assert text.startswith("{")  # random weights may not close it within 40 tokens; a closed one must parse
    if obj.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


def test_named_tool_call_round_trips_through_the_client_types(client: openai.OpenAI) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    r = client.chat.completions.create(
        model=SERVED, messages=MSG, tools=[WEATHER, TIME], tool_choice=choice, temperature=0, max_tokens=60
    )
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content is None
    (call,) = c.message.tool_calls
    assert isinstance(call, openai.types.chat.ChatCompletionMessageToolCall)
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    # the client's own message object goes back into the conversation, with the tool's answer
    follow = [*MSG, c.message, {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'}]
    again = client.chat.completions.create(model=SERVED, messages=follow, tools=[WEATHER], max_tokens=5)
    assert again.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_required_tool_calls_and_streamed_calls(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = dict(
        model=SERVED, messages=MSG, tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False,
        temperature=0, max_tokens=60,
    )  # fmt: skip
    r = client.chat.completions.create(**kwargs)
    (call,) = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and call.function.name in ("get_weather", "get_time")
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    calls = [tc for ch in chunks for tc in ch.choices[0].delta.tool_calls or []]
    assert [(tc.function.name, tc.function.arguments) for tc in calls] == [
        (call.function.name, call.function.arguments)
    ]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_auto_parses_tool_call_blocks_and_leaves_other_text() -> None:
    tool_list = [tools.Tool.model_validate(WEATHER)]
    call = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
    text = f"Let me check.\n<tool_call>\n{json.dumps(call)}\n</tool_call>"
    content, calls = tools.parse(text, tool_list, "auto")
    assert content == "Let me check."
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("get_weather", {"city": "Paris", "unit": "celsius"})
    ]
    assert tools.parse('{"name": "get_weather", "arguments": {"city": "Oslo"}}', tool_list, "auto")[1]
    for free in ("It is sunny.", '<tool_call>{"name": "launch_rocket", "arguments": {}}</tool_call>', "<tool_call>{"):
        assert tools.parse(free, tool_list, "auto") == (free, [])


def test_tools_reach_a_template_without_tool_support_as_a_system_message(tiny_llama: Any) -> None:
    tokenizer = tiny_llama[2]
    assert "tools" not in tokenizer.chat_template  # SmolLM2's
    messages, extra = tools.render(
        tokenizer.chat_template, [{"role": "user", "content": "hi"}], [tools.Tool.model_validate(WEATHER)]
    )
    prompt = tokenizer.apply_chat_template(messages, **extra)
    assert prompt.startswith("<|im_start|>system\n# Tools") and '"name": "get_weather"' in prompt
    assert "<|im_start|>user\nhi<|im_end|>" in prompt


BAD = [
    ({"response_format": {"type": "json_schema"}}, "json_schema: is required"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "wizard"}}}},
     "response_format: the JSON schema cannot be used"),
    ({"tool_choice": "required"}, "tool_choice: is only allowed when tools are given"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice: the function 'nope' is not among the tools (get_weather)"),
    ({"tools": [WEATHER, WEATHER]}, "tools: function names must be unique"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name"),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}},
     "response_format: cannot be combined with tools"),
    ({"response_format": {"type": "json_object"}, "ignore_eos": True}, "ignore_eos: cannot be combined"),
    ({"tools": [WEATHER], "tool_choice": "required", "n": 2}, "n: only 1 choice is served with tools"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "message"), BAD, ids=[m.split(":")[0] + f"-{i}" for i, (_, m) in enumerate(BAD)])
def test_bad_requests_are_400_in_openai_shape(runtime: str, extra: dict[str, Any], message: str) -> None:
    r = httpx.post(f"{runtime}/v1/chat/completions", json={"messages": MSG, "max_tokens": 4, **extra}, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error", error
    assert httpx.get(f"{runtime}/health").status_code == 200


def test_metric_counts_structured_requests(client: openai.OpenAI, runtime: str) -> None:
    def count(kind: str) -> float:
        text = httpx.get(f"{runtime}/metrics").text
        line = f'infleet_structured_output_requests_total{{kind="{kind}",model_name="{SERVED}",tier="bf16"}}'
        return float(next(ln for ln in text.splitlines() if ln.startswith(line)).split()[-1])

    before = count("json_schema"), count("tools")
    client.chat.completions.create(model=SERVED, messages=MSG, response_format=person_format(False), max_tokens=80)
    client.chat.completions.create(model=SERVED, messages=MSG, tools=[WEATHER], tool_choice="required", max_tokens=60)
    client.chat.completions.create(model=SERVED, messages=MSG, max_tokens=2)  # plain: not counted
    assert (count("json_schema"), count("tools")) == (before[0] + 1, before[1] + 1)


def test_through_the_gateway(runtime: str) -> None:
    from infleet.gateway.app import Gateway
    from infleet.gateway.app import build_app as gateway_app
    from infleet.gateway.catalog import Endpoint

    gateway = Gateway()
    gateway.catalog.set_deployment("default", "tiny", SERVED)
    port = int(runtime.rsplit(":", 1)[1])
    gateway.catalog.set_slice("default", "tiny", "s", (Endpoint("127.0.0.1", port),))
    served = serve(gateway_app(gateway))
    url = next(served)
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        r = client.chat.completions.create(
            model=SERVED, messages=MSG, response_format=person_format(), temperature=1.0, seed=7, max_tokens=120
        )
        jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)
        choice = {"type": "function", "function": {"name": "get_time"}}
        t = client.chat.completions.create(model=SERVED, messages=MSG, tools=[TIME], tool_choice=choice, max_tokens=30)
        assert t.choices[0].message.tool_calls[0].function.name == "get_time"
    finally:
        served.close()
