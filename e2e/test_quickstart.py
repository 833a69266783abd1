"""The README's quick start, copy-pasted: the shell block after `make up` runs line by line, as written, in one
bash session on the fleet the suite installed the chart on, and its curl reaches a chat answer through the gateway.

`make up` itself is what the suite's `stack` fixture does (the chart with `helm upgrade --install`, the SmolLM2
example applied and Ready); this test adds the lines a user types next: `eval "$(make -s env)"` (which must export
INFLEET_URL), `kubectl get idep -A` and the curl.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from infleet.cluster.stack import Stack

from .conftest import DEMO_NAMESPACE

pytestmark = [pytest.mark.cluster, pytest.mark.model, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
NAME = "quickstart"


def quick_start_commands(readme: str) -> list[str]:
    """The shell block after "After `make up`:", one command per entry (backslash continuations joined)."""
    block = readme.split("After `make up`:", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    commands, current = [], ""
    for line in block.splitlines():
        current += line + "\n"
        if not line.rstrip().endswith("\\"):
            commands.append(current.rstrip("\n"))
            current = ""
    return [c for c in commands if c.strip()]


def test_the_quick_start_block_is_what_a_user_types() -> None:
    commands = quick_start_commands((REPO / "README.md").read_text())
    assert commands[0].startswith('eval "$(make -s env)"')
    assert any(c.startswith("kubectl get idep") for c in commands)
    assert commands[-1].startswith("curl -s $INFLEET_URL/v1/chat/completions")


@pytest.fixture(scope="module")
def quickstart(stack: Stack, smollm2: Callable[[str], dict[str, Any]]) -> Iterator[str]:
    """The SmolLM2 example under its own served name (the one the README's curl asks for), as `make up` leaves it:
    exactly one deployment serves that name. When another module's fixture already runs the example in the demo
    namespace, that one is the demo; a second with the same name would make the bare model name ambiguous (400)."""
    idep = smollm2(NAME)
    served = idep["spec"]["model"]["servedName"]
    listed = json.loads(stack.kubectl("get", "idep", "-n", DEMO_NAMESPACE, "-o", "json"))["items"]
    existing = [i["metadata"]["name"] for i in listed if i["spec"]["model"].get("servedName") == served]
    if existing:
        stack.wait_ready(DEMO_NAMESPACE, existing[0], quiet=True)
        yield served
        return
    stack.apply(idep)
    try:
        stack.wait_ready(DEMO_NAMESPACE, NAME, quiet=True)
        yield served
    finally:
        stack.kubectl("delete", "idep", NAME, "-n", DEMO_NAMESPACE, "--wait=false")


def test_readme_quick_start_reaches_a_chat_answer(quickstart: str, tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    assert f'"model": "{quickstart}"' in readme, "the README's curl must ask for the example's served name"
    commands = quick_start_commands(readme)
    outputs = [tmp_path / f"{i}.out" for i in range(len(commands))]
    script = ["set -eo pipefail"]
    for command, out in zip(commands, outputs, strict=True):
        script.append(f"{{\n{command}\n}} > {out} 2>&1")  # each line exactly as written, in the same shell
    script.append('echo "INFLEET_URL=$INFLEET_URL"')
    # `make env` runs this environment's Python (VENV), against the fleet this session runs (INFLEET_FLEET_*)
    env = {**os.environ, "VENV": sys.prefix}
    done = subprocess.run(
        ["bash", "-c", "\n".join(script)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    said = {c.splitlines()[0]: o.read_text() for c, o in zip(commands, outputs, strict=True) if o.exists()}
    assert done.returncode == 0, f"{done.stderr}\n{said}"
    assert done.stdout.strip().startswith("INFLEET_URL=http://"), done.stdout
    listed = said[next(c for c in said if c.startswith("kubectl get idep"))]
    assert "P99 TTFT" in listed and DEMO_NAMESPACE in listed, listed
    answer = json.loads(outputs[-1].read_text())
    assert "choices" in answer, answer
    assert answer["choices"][0]["message"]["content"].strip(), answer
