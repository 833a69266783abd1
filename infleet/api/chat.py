"""A chat template rendered to the prompt text, one definition for the runtime (which encodes it) and the gateway
(which encodes it too, to compute the prefix-cache block hashes of `infleet.api.prefix` a replica will store)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jinja2
import jinja2.sandbox


def _raise_template_error(message: str) -> None:
    raise ValueError(f"chat template: {message}")


@lru_cache(maxsize=16)
def _compiled(source: str) -> jinja2.Template:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.globals["raise_exception"] = _raise_template_error
    return env.from_string(source)


def render_chat(
    template: str,
    messages: list[dict[str, Any]],
    *,
    bos_token: str,
    eos_token: str,
    add_generation_prompt: bool = True,
    **extra: Any,
) -> str:
    """The template's text for `messages` (`extra`: more template variables, e.g. `tools`); it is encoded with
    `add_special_tokens=False`."""
    return _compiled(template).render(
        messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos_token, eos_token=eos_token,
        **extra,
    )  # fmt: skip
