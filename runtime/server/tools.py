"""Tool calling: the request's tools in the prompt, the output constrained or parsed back into `tool_calls`.

The model sees the tools through its chat template when the template takes a `tools` variable; otherwise (SmolLM2's
template has no tool support) they go into the system message in the Hermes format that Qwen and SmolLM2's larger
siblings were trained on (docs/structured-output.md shows it):

    <tools>
    {"type": "function", "function": {...}}
    </tools>
    ... <tool_call>
    {"name": <function-name>, "arguments": <args-json-object>}
    </tool_call>

`tool_choice` decides what comes back, as in vLLM: "none" returns text; "auto" parses `<tool_call>` blocks (or a bare
call object) out of free text; "required" constrains the output to a JSON array of calls to the given tools; a named
function constrains it to that function's arguments.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from infleet.runtime.engine.structured import GrammarSpec
from infleet.runtime.server.errors import APIError

NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for function names


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice

TOOLS_PROMPT = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""

TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def check(tools: list[Tool] | None, choice: ToolChoice | None) -> None:
    """Refuse what cannot be honoured, with a 400 naming the field."""
    names = [t.function.name for t in tools or []]
    if len(set(names)) != len(names):
        raise APIError(400, "tools: function names must be unique", param="tools")
    if choice is not None and choice != "none" and not tools:
        raise APIError(400, "tool_choice: is only allowed when tools are given", param="tool_choice")
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        raise APIError(
            400,
            f"tool_choice: the function {choice.function.name!r} is not among the tools ({', '.join(names)})",
            param="tool_choice",
        )


def active(tools: list[Tool] | None, choice: ToolChoice | None) -> bool:
    """Whether the answer may carry tool calls."""
    return bool(tools) and choice != "none"


def grammar(tools: list[Tool], choice: ToolChoice | None, parallel: bool | None) -> GrammarSpec | None:
    """The constraint for "required" and a named function; None for "auto"/"none" (free text, parsed after)."""
    if isinstance(choice, NamedToolChoice):
        fn = next(t.function for t in tools if t.function.name == choice.function.name)
        return GrammarSpec("json_schema", fn.parameters)
    if choice != "required":
        return None
    call = {
        "anyOf": [
            {
                "type": "object",
                "properties": {"name": {"const": t.function.name}, "arguments": t.function.parameters},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for t in tools
        ]
    }
    calls: dict[str, Any] = {"type": "array", "items": call, "minItems": 1}
    if parallel is False:
        calls["maxItems"] = 1
    return GrammarSpec("json_schema", calls)


def render(
    template: str | None, messages: list[dict[str, Any]], tools: list[Tool]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Messages and extra template variables that show `tools` to the model: through the template if it knows
    `tools`, else as a system message (joined to the conversation's own system message, if any)."""
    schemas = [t.model_dump(exclude_none=True) for t in tools]
    if template is not None and "tools" in template:
        return messages, {"tools": schemas}
    block = TOOLS_PROMPT.format(tools="\n".join(json.dumps(s) for s in schemas))
    if messages and messages[0]["role"] == "system":
        first = {**messages[0], "content": f"{messages[0]['content']}\n\n{block}"}
        return [first, *messages[1:]], {}
    return [{"role": "system", "content": block}, *messages], {}


def as_text(call: dict[str, Any]) -> str:
    """An earlier assistant tool call as the model would have written it (for templates without tool support)."""
    fn = call.get("function", {})
    try:
        arguments = json.loads(fn.get("arguments") or "{}")
    except json.JSONDecodeError:
        arguments = fn.get("arguments")
    return f"<tool_call>\n{json.dumps({'name': fn.get('name'), 'arguments': arguments})}\n</tool_call>"


def tool_call(name: str, arguments: Any) -> dict[str, Any]:
    """One entry of OpenAI's `tool_calls`; `arguments` is a JSON string there."""
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


def parse(text: str, tools: list[Tool], choice: ToolChoice | None) -> tuple[str | None, list[dict[str, Any]]]:
    """(content, tool_calls) from the generated text. Constrained output is JSON by construction; free text ("auto")
    yields calls only for well-formed objects naming a known tool, and anything else stays content."""
    if isinstance(choice, NamedToolChoice):
        try:
            return None, [tool_call(choice.function.name, json.loads(text))]
        except json.JSONDecodeError:
            return text, []  # cut short (finish_reason "length"): hand back what there is
    if choice == "required":
        try:
            return None, [tool_call(c["name"], c["arguments"]) for c in json.loads(text)]
        except json.JSONDecodeError:
            return text, []
    names = {t.function.name for t in tools}
    blocks = TOOL_CALL.findall(text)
    calls = [c for c in (_call(b, names) for b in (blocks or [text.strip()])) if c is not None]
    if not calls:
        return text, []
    rest = TOOL_CALL.sub("", text).strip() if blocks else ""
    return rest or None, calls


def _call(raw: str, names: set[str]) -> dict[str, Any] | None:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    arguments = obj.get("arguments", obj.get("parameters", {}))
    return tool_call(obj["name"], arguments) if isinstance(arguments, dict) else None
