"""The gateway on the local fleet: discovery through the Kubernetes API, two InferenceDeployments behind one gateway,
and scale from zero. The operator runs as a subprocess; pods of image `infleet/runtime` are real runtime processes
on their own 127.x pod IPs, serving SmolLM2."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from infleet.cluster.testing import FleetHandle, wait_for

from .conftest import free_port

pytestmark = [pytest.mark.cluster, pytest.mark.model, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
ANNOTATION = "infleet.dev/scale-from-zero-requested"


class Process:
    """A subprocess with KUBECONFIG set and its output in a file, shown when something fails."""

    def __init__(self, cmd: list[str], kubeconfig: Path, log: Path) -> None:
        self.log = log
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.log.name} exited with {self.proc.returncode}:\n{self.output()}")
        return True

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def stack(fleet: FleetHandle, namespace: str, tmp_path: Path) -> Iterator[tuple[FleetHandle, str, str]]:
    """CRDs, the operator and the gateway (both watching `namespace`); yields (fleet, namespace, gateway URL)."""
    fleet.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    fleet.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/inferencedeployments.infleet.dev")
    operator = Process(
        [sys.executable, "-m", "infleet.operator", "run", "--namespace", namespace,
         "--metrics-port", str(free_port()), "--health-port", str(free_port())],
        fleet.kubeconfig, tmp_path / "operator.log",
    )  # fmt: skip
    port = free_port()
    gateway = Process(
        [sys.executable, "-m", "infleet.gateway", "run", "--host", "127.0.0.1", "--port", str(port),
         "--namespace", namespace, "--hold-timeout", "600"],
        fleet.kubeconfig, tmp_path / "gateway.log",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def gateway_ready() -> bool:
        gateway.alive()
        try:
            return httpx.get(f"{url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(gateway_ready, timeout=60, what="the gateway to list the fleet")
        yield fleet, namespace, url
    finally:
        print("---- gateway log\n" + gateway.output())
        gateway.stop()
        operator.stop()


def runtime_spec(served: str, **overrides: Any) -> dict[str, Any]:
    from infleet.runtime.loader.smollm2 import smollm2_gguf

    spec: dict[str, Any] = {
        "model": {"uri": f"file://{smollm2_gguf()}", "servedName": served},
        "runtime": {"maxModelLen": 1024, "maxBatchTokens": 1024},
        "accelerator": {"type": "NVIDIA-L4"},
        "replicas": 1,
    }
    spec.update(overrides)
    return spec


def apply(fleet: FleetHandle, namespace: str, name: str, spec: dict[str, Any]) -> None:
    body = {
        "apiVersion": "infleet.dev/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {"name": name},
        "spec": spec,
    }
    fleet.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body))


def idep(fleet: FleetHandle, namespace: str, name: str) -> dict[str, Any]:
    return dict(json.loads(fleet.kubectl("get", "idep", name, "-n", namespace, "-o", "json").stdout))


def ready_replicas(fleet: FleetHandle, namespace: str, name: str) -> int:
    return int((idep(fleet, namespace, name).get("status") or {}).get("readyReplicas") or 0)


def test_two_deployments_behind_one_gateway(stack: tuple[FleetHandle, str, str]) -> None:
    fleet, ns, url = stack
    apply(fleet, ns, "alpha", runtime_spec("smollm2-alpha"))
    apply(fleet, ns, "beta", runtime_spec("smollm2-beta", routing={"strategy": "prefixAffinity"}))
    c = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    wait_for(
        lambda: {m.id for m in c.models.list()} == {"smollm2-alpha", "smollm2-beta"},
        timeout=60, what="the gateway to discover both InferenceDeployments",
    )  # fmt: skip
    for name in ("alpha", "beta"):
        wait_for(lambda name=name: ready_replicas(fleet, ns, name) >= 1, timeout=600, what=f"{name} to be ready")
    for model in ("smollm2-alpha", "smollm2-beta"):
        chat = c.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
            max_tokens=8,
            temperature=0,
        )
        assert chat.model == model and "Paris" in (chat.choices[0].message.content or "")
        pieces = [
            chunk.choices[0].delta.content or ""
            for chunk in c.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "Hi!"}], max_tokens=6, stream=True
            )
            if chunk.choices
        ]
        assert "".join(pieces)
        assert c.chat.completions.create(
            model=f"{ns}/{model}", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        ).choices  # the namespace-qualified name reaches it too
    with pytest.raises(openai.NotFoundError, match="smollm2-alpha"):
        c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "Hi"}])
    metrics = httpx.get(f"{url}/metrics").text
    assert (
        f'infleet_gateway_routing_decisions_total{{deployment="beta",namespace="{ns}",strategy="prefixAffinity"}}'
        in (metrics)
    )


def test_scale_from_zero_holds_the_request_then_serves_it(stack: tuple[FleetHandle, str, str]) -> None:
    fleet, ns, url = stack
    scaling = {"enabled": True, "minReplicas": 0, "maxReplicas": 1}
    apply(fleet, ns, "sleepy", runtime_spec("smollm2-sleepy", replicas=0, scaling=scaling))
    c = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=900)
    wait_for(lambda: "smollm2-sleepy" in {m.id for m in c.models.list()}, timeout=60, what="discovery")
    assert ready_replicas(fleet, ns, "sleepy") == 0
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        start = time.monotonic()
        answer = pool.submit(  # no client-side retry: the gateway holds it until a replica is ready
            lambda: c.chat.completions.create(
                model="smollm2-sleepy",
                messages=[{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
                max_tokens=8,
                temperature=0,
            )
        )
        wait_for(
            lambda: ANNOTATION in (idep(fleet, ns, "sleepy")["metadata"].get("annotations") or {}),
            timeout=30, what="the gateway to record scale-from-zero demand on the InferenceDeployment",
        )  # fmt: skip
        wait_for(
            lambda: int(idep(fleet, ns, "sleepy")["spec"].get("replicas") or 0) >= 1,
            timeout=120, what=f"the operator to scale up on the {ANNOTATION} annotation",
        )  # fmt: skip
        chat = answer.result(timeout=900)
        waited = time.monotonic() - start
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    assert "Paris" in (chat.choices[0].message.content or "")
    metrics = httpx.get(f"{url}/metrics").text
    held = [line for line in metrics.splitlines() if line.startswith("infleet_gateway_held_seconds_sum")]
    print(f"scale from zero: answered after {waited:.1f}s; {held}")
    assert any('deployment="sleepy"' in line and float(line.split()[-1]) > 0 for line in held)
