"""A multi-pod replica on the local fleet: the operator renders a pipeline-parallel group as a StatefulSet of two
pods (L4 nodes have one GPU each), the launcher runs each pod as a real runtime process, the ranks find their
leader through the rendered environment, and the leader answers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from infleet.cluster.testing import FleetHandle, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.model, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def operator(fleet: FleetHandle, namespace: str, tmp_path: Path) -> Iterator[Path]:
    fleet.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    fleet.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/inferencedeployments.infleet.dev")
    log = tmp_path / "operator.log"
    cmd = [sys.executable, "-m", "infleet.operator", "run", "--namespace", namespace]
    cmd += ["--metrics-port", str(_free_port()), "--health-port", str(_free_port())]
    env = {**os.environ, "KUBECONFIG": str(fleet.kubeconfig), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        yield log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def pods(fleet: FleetHandle, namespace: str, name: str) -> list[dict[str, Any]]:
    out = fleet.kubectl("get", "pods", "-n", namespace, "-l", f"infleet.dev/deployment={name}", "-o", "json")
    return list(json.loads(out.stdout)["items"])


def ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def test_pipeline_group_across_two_pods_answers_through_its_leader(
    fleet: FleetHandle, namespace: str, operator: Path
) -> None:
    from infleet.runtime.loader.smollm2 import smollm2_gguf

    spec = {
        "model": {"uri": f"file://{smollm2_gguf()}", "servedName": "smollm2-pp"},
        "runtime": {"maxModelLen": 512, "maxBatchTokens": 512},
        "accelerator": {"type": "NVIDIA-L4"},
        "parallelism": {"tensor": 1, "pipeline": 2},
        "replicas": 1,
    }
    body = {"apiVersion": "infleet.dev/v1alpha1", "kind": "InferenceDeployment", "metadata": {"name": "pp"}}
    fleet.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body | {"spec": spec}))
    group = wait_for(
        lambda: len(p := pods(fleet, namespace, "pp")) == 2 and all(ready(x) for x in p) and p,
        timeout=900,
        what="both pods of the group to be ready",
    )
    ranks = {p["metadata"]["labels"]["apps.kubernetes.io/pod-index"]: p for p in group}
    assert set(ranks) == {"0", "1"}
    env = {e["name"]: e.get("value") for e in ranks["1"]["spec"]["containers"][0]["env"]}
    assert env["INFLEET_WORLD_SIZE"] == "2" and env["INFLEET_LEADER_ADDR"].startswith(ranks["0"]["metadata"]["name"])
    leader_ip = ranks["0"]["status"]["podIP"]
    answer = httpx.post(
        f"http://{leader_ip}:8000/v1/completions",
        json={"model": "smollm2-pp", "prompt": "The capital of France is", "max_tokens": 5, "temperature": 0},
        timeout=300,
    )
    assert answer.status_code == 200, answer.text
    assert "Paris" in answer.json()["choices"][0]["text"]
    rank_ip = ranks["1"]["status"]["podIP"]
    assert httpx.get(f"http://{rank_ip}:8000/health", timeout=10).status_code == 200  # the rank pod's own health
