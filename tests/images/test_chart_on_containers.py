"""The chart as users deploy it, on pods that are podman containers of the built images: a fleet started with
`--pods containers` (`make test-images` exports INFLEET_PODS=containers before the session's fleet starts), the chart
with its default operator and gateway images, the shipped SmolLM2 example (the runtime image, its model fetched
from the fleet's object store by the runtime image's own fetcher), and a chat answer through the gateway.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest
import yaml

from infleet.cluster import images, objectstore
from infleet.cluster.stack import EXAMPLE, Stack
from infleet.cluster.testing import FleetHandle
from infleet.runtime.loader.smollm2 import smollm2_gguf

pytestmark = [pytest.mark.images, pytest.mark.cluster, pytest.mark.slow]

RELEASE, DEMO = "imgs", "imgs-demo"


@pytest.fixture(scope="module")
def stack(fleet: FleetHandle) -> Iterator[Stack]:
    mode_file = fleet.fleet.dir / "pods-mode"
    mode = mode_file.read_text() if mode_file.exists() else "processes"
    if mode != "containers":
        pytest.fail(
            f"the fleet in {fleet.fleet.dir} runs pods as {mode}: start it with `infleet cluster up --pods containers`"
            " (make test-images sets INFLEET_PODS=containers)"
        )
    for name in ("operator", "gateway", "runtime-cpu"):
        assert images.exists(images.tag(name)), f"{images.tag(name)} is not built: run `make images` first"
    stack = Stack.on_fleet(fleet.fleet, release=RELEASE, namespace=f"infleet-{RELEASE}")
    stack.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": DEMO}})
    stack.install_chart(f"operator.watchNamespaces={{{DEMO}}}", f"gateway.watchNamespaces={{{DEMO}}}")
    try:
        yield stack
    finally:
        stack.helm("uninstall", RELEASE, "-n", f"infleet-{RELEASE}", "--wait")
        stack.kubectl("delete", "namespace", DEMO, "--wait=false")
        stack.close()


def test_chart_with_built_images_answers_a_chat_through_the_gateway(fleet: FleetHandle, stack: Stack) -> None:
    objectstore.seed(fleet.fleet, smollm2_gguf())
    stack.model_store_secret(fleet.fleet, DEMO)
    idep = yaml.safe_load(EXAMPLE.read_text())
    idep["metadata"]["namespace"] = DEMO
    stack.apply(idep)
    stack.wait_ready(DEMO, idep["metadata"]["name"], timeout=900)

    # every pod of the release and the example runs as a container of its image, none as a host process
    listed = images.podman(
        "ps", f"--filter=label=infleet.pods-dir={fleet.fleet.dir / 'pods'}", "--format=json", capture_output=True
    )
    running = {c["Image"] for c in json.loads(listed.stdout or "[]")}
    expected = {images.tag("operator"), images.tag("gateway"), images.tag("runtime-cpu")}
    assert expected <= running, f"containers running: {sorted(running)}"
    pods = stack.core.list_namespaced_pod(DEMO, label_selector=f"infleet.dev/deployment={idep['metadata']['name']}")
    ids = [c.container_id for pod in pods.items for c in pod.status.container_statuses or []]
    assert ids and all(i.startswith("podman://") for i in ids), ids

    api = openai.OpenAI(base_url=f"{stack.gateway_url()}/v1", api_key="unused", timeout=300)
    answer = api.chat.completions.create(
        model=idep["spec"]["model"]["servedName"],
        messages=[{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
        max_tokens=16,
        temperature=0,
    )
    assert "Paris" in (answer.choices[0].message.content or ""), answer
