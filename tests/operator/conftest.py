"""Operator test support: the CRDs installed in the local fleet, and the operator as a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
import yaml

from infleet.cluster.testing import FleetHandle, wait_for

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorProcess:
    """`python -m infleet.operator run --namespace NS` with KUBECONFIG set; logs go to a file for failure reports."""

    def __init__(self, kubeconfig: Path, namespace: str, log_dir: Path) -> None:
        self.kubeconfig, self.namespace, self.log_dir = kubeconfig, namespace, log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.metrics_port = self.health_port = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"operator-{self.namespace}-{self.starts}.log"

    def start(self, *extra: str) -> OperatorProcess:
        self.starts += 1
        self.metrics_port, self.health_port = free_port(), free_port()
        cmd = [sys.executable, "-m", "infleet.operator", "run", "--namespace", self.namespace]
        cmd += ["--metrics-port", str(self.metrics_port), "--health-port", str(self.health_port), *extra]
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        # a loaded machine can take a minute just to import and log in; the wait names the log to read
        wait_for(self.healthy, timeout=180, interval=0.5, what=f"operator /healthz (log: {self.log_path})")
        return self

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=10) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=30) as resp:
            return str(resp.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """The sum of `name`'s samples whose labels include `labels` (0 when there are none yet)."""
        found = 0.0
        for line in self.metrics().splitlines():
            metric, _, value = line.rpartition(" ")
            family, _, label_text = metric.partition("{")
            if family == name and all(f'{k}="{v}"' in label_text for k, v in labels.items()):
                found += float(value)
        return found

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no cleanup, as a crash or an OOM kill would do."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="session")
def crds(fleet: FleetHandle) -> FleetHandle:
    """The InferenceDeployment and kopf peering CRDs, applied from crds/ and established."""
    fleet.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    fleet.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/inferencedeployments.infleet.dev")
    return fleet


@pytest.fixture
def operator(crds: FleetHandle, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(crds.kubeconfig, namespace, tmp_path)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


# ---- helpers ----------------------------------------------------------------------------------------------------


def idep(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "infleet.dev/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {"name": name},
        "spec": spec,
    }


def apply(
    fleet: FleetHandle, namespace: str, *objects: dict[str, Any], check: bool = True
) -> subprocess.CompletedProcess[str]:
    return fleet.kubectl(
        "apply", "--validate=strict", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(objects), check=check
    )


def get(fleet: FleetHandle, namespace: str, kind: str, name: str | None = None, selector: str | None = None) -> Any:
    args = ["get", kind, "-n", namespace, "-o", "json"]
    if name:
        args.insert(2, name)
    if selector:
        args += ["-l", selector]
    proc = fleet.kubectl(*args, check=False)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout)


def conditions(body: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in ((body or {}).get("status") or {}).get("conditions") or []}


def wait_condition(
    fleet: FleetHandle,
    namespace: str,
    name: str,
    type_: str,
    status: str = "True",
    reason: str | None = None,
    timeout: float = 180,
    operator: OperatorProcess | None = None,
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body = get(fleet, namespace, "inferencedeployment", name)
        cond = conditions(body).get(type_)
        if cond and cond["status"] == status and (reason is None or cond["reason"] == reason):
            return body
        return None

    result: dict[str, Any] = wait_explained(
        fleet, namespace, name, check, timeout=timeout, what=f"{name} {type_}={status} {reason}", operator=operator
    )
    return result


def wait_explained(
    fleet: FleetHandle,
    namespace: str,
    name: str,
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    operator: OperatorProcess | None = None,
) -> Any:
    """`wait_for`, but a timeout reports the deployment's status, pods, events and the operator's log."""
    try:
        return wait_for(predicate, timeout=timeout, interval=0.5, what=what)
    except AssertionError as err:
        body = get(fleet, namespace, "inferencedeployment", name)
        logs = operator.log() if operator else ""
        pods = fleet.kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False).stdout
        events = fleet.kubectl("get", "events", "-n", namespace, check=False).stdout[-3000:]
        state = json.dumps((body or {}).get("status"), indent=1)
        raise AssertionError(f"{err}\nstatus: {state}\npods:\n{pods}\nevents:\n{events}\n{logs}") from None


def _quietly(stream: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """A watch stream that ends without an exception when the watch is stopped or the connection drops."""
    try:
        yield from stream
    except (urllib3.exceptions.HTTPError, OSError):
        return


class ConditionRecorder:
    """Watches one InferenceDeployment and records every (Ready, Progressing) pair it passes through, so a test
    sees transitions that happen faster than any poll."""

    def __init__(self, fleet: FleetHandle, namespace: str, name: str) -> None:
        import threading

        from kubernetes import client, watch

        self.seen: list[tuple[str, str]] = []
        self._watch = watch.Watch()
        custom = client.CustomObjectsApi(fleet.api)

        def run() -> None:
            stream = self._watch.stream(
                custom.list_namespaced_custom_object,
                "infleet.dev",
                "v1alpha1",
                namespace,
                "inferencedeployments",
                field_selector=f"metadata.name={name}",
                timeout_seconds=300,
            )
            for event in _quietly(stream):
                conds = conditions(event["object"])
                pair = (conds.get("Ready", {}).get("status", "-"), conds.get("Progressing", {}).get("status", "-"))
                if not self.seen or self.seen[-1] != pair:
                    self.seen.append(pair)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        time.sleep(0.5)  # let the watch open before the test creates the object

    def stop(self) -> list[tuple[str, str]]:
        self._watch.stop()
        return self.seen


class RolloutRecorder:
    """Watches a deployment's pods during a rollout and checks, at every moment an old pod starts terminating,
    that at least as many new pods are already Ready as old pods have gone: new pods before old go."""

    def __init__(self, fleet: FleetHandle, namespace: str, name: str, new_tier: str) -> None:
        import threading

        from kubernetes import client, watch

        self.violations: list[str] = []
        self.most_pods = 0
        self._watch = watch.Watch()
        core = client.CoreV1Api(fleet.api)
        ready_new: set[str] = set()
        going_old: set[str] = set()
        alive: set[str] = set()

        def run() -> None:
            stream = self._watch.stream(
                core.list_namespaced_pod,
                namespace,
                label_selector=f"infleet.dev/deployment={name}",
                timeout_seconds=300,
            )
            for event in _quietly(stream):
                pod = event["object"]
                pod_name, tier = pod.metadata.name, pod.metadata.labels.get("infleet.dev/tier")
                is_ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
                if event["type"] == "DELETED":
                    alive.discard(pod_name)
                else:
                    alive.add(pod_name)
                self.most_pods = max(self.most_pods, len(alive))
                if tier == new_tier:
                    (ready_new.add if is_ready and event["type"] != "DELETED" else ready_new.discard)(pod_name)
                elif (pod.metadata.deletion_timestamp or event["type"] == "DELETED") and pod_name not in going_old:
                    going_old.add(pod_name)
                    if len(ready_new) < len(going_old):
                        self.violations.append(
                            f"old pod {pod_name} went while only {len(ready_new)} new pods were ready "
                            f"({len(going_old)} old pods gone)"
                        )

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        time.sleep(0.5)

    def stop(self) -> None:
        self._watch.stop()
