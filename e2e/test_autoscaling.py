"""The autoscaler on the local fleet: real runtime processes, the fleet's Prometheus scraping them, the operator's
timer reading it. Load beyond the SLO raises replicas and status shows what was observed; when the load stops,
replicas return to the minimum after the scale-down window."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from infleet.cluster.stack import Stack, example
from infleet.cluster.testing import wait_for
from infleet.runtime.loader.smollm2 import smollm2_gguf

pytestmark = [pytest.mark.cluster, pytest.mark.model, pytest.mark.slow]

NAMESPACE = os.environ.get("INFLEET_E2E_RELEASE", "e2e") + "-demo"  # the namespace the release watches
NAME = "scaler"


@pytest.fixture
def autoscaled(stack: Stack) -> Iterator[dict[str, Any]]:
    idep = example(smollm2_gguf(), NAMESPACE)
    idep["metadata"]["name"] = NAME
    idep["spec"]["model"]["servedName"] = "scaler"
    # A TTFT objective a loaded two-core machine cannot meet under concurrent load, so the p99 guard must act.
    idep["spec"]["slo"] = {"ttftP99": "300ms", "tpotP99": "5s", "objectivePercent": 99}
    idep["spec"]["scaling"] = {
        "enabled": True,
        "minReplicas": 1,
        "maxReplicas": 2,
        "targetQueueDepth": 1,
        "scaleDownStabilization": "30s",
    }
    stack.apply(idep)
    stack.wait_ready(NAMESPACE, NAME, quiet=True)
    yield idep
    stack.kubectl("delete", "idep", NAME, "-n", NAMESPACE, "--wait=false")


def test_load_raises_replicas_and_they_fall_back_when_it_stops(stack: Stack, autoscaled: dict[str, Any]) -> None:
    client = openai.OpenAI(base_url=f"{stack.gateway_url()}/v1", api_key="unused", max_retries=0, timeout=300)
    stop = threading.Event()
    errors: list[str] = []

    def load() -> None:
        while not stop.is_set():
            try:
                client.chat.completions.create(
                    model="scaler", messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=48
                )
            except openai.APIError as err:
                errors.append(repr(err))

    workers = [threading.Thread(target=load) for _ in range(6)]
    for w in workers:
        w.start()
    try:

        def scaled_up() -> dict[str, Any] | None:
            obj = stack.idep(NAMESPACE, NAME)
            return obj if obj["spec"].get("replicas", 1) >= 2 else None

        scaled = wait_for(
            scaled_up,
            timeout=600,
            interval=2,
            what="the autoscaler to raise replicas under load",
        )
        observed = scaled["status"].get("observed") or {}
        assert observed.get("ttftP99Seconds") is not None, scaled["status"]
        stack.wait_ready(NAMESPACE, NAME, timeout=600, quiet=True)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=300)
    assert errors == []
    wait_for(
        lambda: stack.idep(NAMESPACE, NAME)["spec"].get("replicas") == 1,
        timeout=600,
        interval=2,
        what="replicas back at the minimum after the load stopped",
    )
