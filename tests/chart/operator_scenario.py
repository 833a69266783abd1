"""The operator run as a real process under a ServiceAccount with given rules, and one short scenario that uses
every permission the chart grants it.

The scenario runs step by step against the local fleet (pods use a non-infleet image, so KWOK fakes them). It
stops at the first step that does not happen in time, or as soon as the operator logs a permission error (the
API server's 403): either is a failure, and the evidence says which.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from infleet.cluster.testing import FleetHandle

from .helm import ROOT

FAKE_IMAGE = "registry.local/fake-runtime:1"  # not infleet/*: KWOK runs (fakes) these pods
H100 = "NVIDIA-H100-80GB-HBM3"
# a 403 status, never the milliseconds of a log line's timestamp ("05:40:10,403")
DENIED = re.compile(r"(?<![,.:])\b403\b|[Ff]orbidden|Not enough permissions")


class ScenarioFailed(AssertionError):
    def __init__(self, step: str, evidence: str, denied: str | None = None) -> None:
        super().__init__(f"step {step!r} failed: {evidence}")
        self.step, self.evidence, self.denied = step, evidence, denied

    def names(self, resource: str, verb: str) -> bool:
        """Was the operator refused exactly this (in the API server's words)?"""
        return self.denied is not None and f'cannot {verb} resource "{resource}"' in self.denied


# ---- a ServiceAccount with exactly some rules -------------------------------------------------------------------


def bind_rules(
    fleet: FleetHandle, namespace: str, cluster_rules: list[dict[str, Any]], namespaced_rules: list[dict[str, Any]]
) -> Callable[[], None]:
    """ServiceAccount `operator` in `namespace`, bound to a ClusterRole and a Role with these rules; returns the
    clean-up for the cluster-scoped pair."""
    name = f"{namespace}-operator"
    sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "operator", "namespace": namespace}}
    subject = [{"kind": "ServiceAccount", "name": "operator", "namespace": namespace}]
    rbac = "rbac.authorization.k8s.io/v1"
    objects = [
        sa,
        {"apiVersion": rbac, "kind": "ClusterRole", "metadata": {"name": name}, "rules": cluster_rules},
        {
            "apiVersion": rbac,
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": subject,
        },
        {
            "apiVersion": rbac,
            "kind": "Role",
            "metadata": {"name": "operator", "namespace": namespace},
            "rules": namespaced_rules,
        },
        {
            "apiVersion": rbac,
            "kind": "RoleBinding",
            "metadata": {"name": "operator", "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "operator"},
            "subjects": subject,
        },
    ]
    fleet.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))

    def cleanup() -> None:
        fleet.kubectl(
            "delete", "clusterrolebinding,clusterrole", name, "--ignore-not-found", "--wait=false", check=False
        )

    return cleanup


def service_account_kubeconfig(fleet: FleetHandle, namespace: str, sa: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount (a TokenRequest token), nothing more."""
    admin = yaml.safe_load(fleet.kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600))
    token = fleet.core.create_namespaced_service_account_token(sa, namespace, request).status.token
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fleet", "cluster": cluster}],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": sa, "context": {"cluster": "fleet", "user": sa, "namespace": namespace}}],
        "current-context": sa,
    }
    path.write_text(yaml.safe_dump(config))
    return path


# ---- the operator process ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Operator:
    kubeconfig: Path
    namespace: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    health_port: int = field(default_factory=free_port)

    def start(self) -> Operator:
        cmd = [sys.executable, "-m", "infleet.operator", "run", "--namespace", self.namespace]
        cmd += ["--metrics-port", "0", "--health-port", str(self.health_port), "--peering"]
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def denied(self) -> str | None:
        """The first line where the API server refused the operator something."""
        return next((line for line in self.log().splitlines() if DENIED.search(line)), None)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


# ---- the scenario -----------------------------------------------------------------------------------------------


def idep(name: str, spec: dict[str, Any], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, **({"annotations": annotations} if annotations else {})}
    return {"apiVersion": "infleet.dev/v1alpha1", "kind": "InferenceDeployment", "metadata": meta, "spec": spec}


def spec(accelerator: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "model": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct", "servedName": "smollm2"},
        "runtime": {"image": FAKE_IMAGE},
        "accelerator": accelerator,
        "replicas": 1,
        **extra,
    }


GROUPED = {"tensor": 2, "pipeline": 2}  # two pods of 2 GPUs per replica (H100_NODES says 2 GPUs per node)
H100_NODES = {"type": H100, "gpusPerNode": 2}


class Scenario:
    STEP_TIMEOUT = 90.0  # generous: the machine is shared; a refused request ends a step at once anyway

    def __init__(self, fleet: FleetHandle, namespace: str, operator: Operator) -> None:
        self.fleet, self.ns, self.op = fleet, namespace, operator
        self.passed: list[str] = []

    # -- plumbing
    def kubectl(self, *args: str, input: str | None = None) -> str:
        return self.fleet.kubectl(*args, "-n", self.ns, input=input).stdout

    def apply(self, *objects: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))

    def get(self, kind: str, name: str | None = None, selector: str | None = None) -> Any:
        args = ["get", kind, *([name] if name else []), "-n", self.ns, "-o", "json"]
        proc = self.fleet.kubectl(*args, *(["-l", selector] if selector else []), check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        body = self.get("inferencedeployment", name) or {}
        return next((c for c in (body.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})

    def until(self, step: str, predicate: Callable[[], Any], timeout: float | None = None) -> Any:
        deadline = time.monotonic() + (timeout or self.STEP_TIMEOUT)
        while True:
            denied = self.op.denied()
            if denied:
                raise ScenarioFailed(step, f"the operator was refused: {denied.strip()[:400]}", denied)
            if self.op.proc and self.op.proc.poll() is not None:
                raise ScenarioFailed(step, f"the operator exited with {self.op.proc.returncode}")
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise ScenarioFailed(step, f"did not happen within {timeout or self.STEP_TIMEOUT:.0f}s")
            time.sleep(0.3)

    def run(self) -> list[str]:
        for step in (
            self.operator_starts,
            self.deployment_becomes_ready,
            self.problem_is_announced,
            self.missing_volume_clears_when_it_appears,
            self.groups_get_ranks,
            self.crashed_rank_restarts_its_group,
            self.scale_down_removes_a_group,
            self.group_to_single_removes_groups,
            self.single_to_group_removes_the_deployment,
            self.scale_from_zero_through_the_scale_subresource,
            self.no_permission_errors,
        ):
            step()
            self.passed.append(step.__name__)
        return self.passed

    # -- the steps
    def operator_starts(self) -> None:
        self.until("operator_starts", self.op.healthy)

    def deployment_becomes_ready(self) -> None:
        self.apply(idep("one", spec(H100_NODES)))
        self.until("deployment_becomes_ready", lambda: self.condition("one", "Ready").get("status") == "True")

    def problem_is_announced(self) -> None:
        self.apply(idep("nomatch", spec({"type": "NVIDIA-B200-180GB"})))

        def warned() -> bool:
            events = (self.get("events") or {}).get("items", [])
            return self.condition("nomatch", "Degraded").get("reason") == "NoMatchingNodes" and any(
                e["reason"] == "NoMatchingNodes" and e["involvedObject"]["name"] == "nomatch" for e in events
            )

        self.until("problem_is_announced", warned)

    def missing_volume_clears_when_it_appears(self) -> None:
        s = spec({"type": H100})
        s["model"] = {"uri": "pvc://weights/smollm2", "servedName": "smollm2"}
        self.apply(idep("vol", s))
        step = "missing_volume_clears_when_it_appears"
        self.until(step, lambda: self.condition("vol", "Degraded").get("reason") == "ModelVolumeNotFound")
        claim = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "weights"},
            "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}},
        }
        self.apply(claim)
        self.until(step, lambda: self.condition("vol", "Degraded").get("status") == "False")

    def group_pods(self, name: str) -> list[dict[str, Any]]:
        return list((self.get("pods", selector=f"infleet.dev/deployment={name}") or {}).get("items", []))

    def groups_get_ranks(self) -> None:
        self.apply(idep("grp", spec(H100_NODES, parallelism=GROUPED, replicas=2)))

        def ranked() -> bool:
            pods = self.group_pods("grp")
            return len(pods) == 4 and all("infleet.dev/rank" in p["metadata"]["labels"] for p in pods)

        self.until("groups_get_ranks", lambda: self.condition("grp", "Ready").get("status") == "True" and ranked())

    def crashed_rank_restarts_its_group(self) -> None:
        pods = {
            (p["metadata"]["labels"]["infleet.dev/group"], p["metadata"]["labels"]["infleet.dev/rank"]): p
            for p in self.group_pods("grp")
        }
        crashed, peer = pods[("0", "1")], pods[("0", "0")]
        status = crashed["status"]
        for c in status.get("containerStatuses") or []:
            c["restartCount"] = c.get("restartCount", 0) + 1
        self.fleet.core.patch_namespaced_pod_status(
            crashed["metadata"]["name"], self.ns, {"status": {"containerStatuses": status["containerStatuses"]}}
        )

        def peer_replaced() -> bool:
            now = self.get("pod", peer["metadata"]["name"])
            return (
                now is None
                or now["metadata"]["uid"] != peer["metadata"]["uid"]
                or bool(now["metadata"].get("deletionTimestamp"))
            )

        self.until("crashed_rank_restarts_its_group", peer_replaced)

    def statefulsets(self, name: str) -> list[str]:
        items = (self.get("statefulsets", selector=f"infleet.dev/deployment={name}") or {}).get("items", [])
        return sorted(s["metadata"]["name"] for s in items if not s["metadata"].get("deletionTimestamp"))

    def scale_down_removes_a_group(self) -> None:
        self.kubectl("patch", "idep", "grp", "--type=merge", "-p", '{"spec": {"replicas": 1}}')
        self.until("scale_down_removes_a_group", lambda: len(self.statefulsets("grp")) == 1)

    def group_to_single_removes_groups(self) -> None:
        self.kubectl(
            "patch", "idep", "grp", "--type=merge", "-p", '{"spec": {"parallelism": {"tensor": 1, "pipeline": 1}}}'
        )

        def single() -> bool:
            return (
                self.get("deployment", "grp") is not None
                and not self.statefulsets("grp")
                and self.get("service", "grp-group") is None
            )

        self.until("group_to_single_removes_groups", single)

    def single_to_group_removes_the_deployment(self) -> None:
        patch = json.dumps({"spec": {"parallelism": GROUPED}})
        self.kubectl("patch", "idep", "one", "--type=merge", "-p", patch)
        self.until("single_to_group_removes_the_deployment", lambda: self.get("deployment", "one") is None)

    def scale_from_zero_through_the_scale_subresource(self) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        s = spec({"type": H100}, replicas=0, scaling={"enabled": True, "minReplicas": 0, "maxReplicas": 2})
        self.apply(idep("zero", s, {"infleet.dev/scale-from-zero-requested": stamp}))
        step = "scale_from_zero_through_the_scale_subresource"
        self.until(step, lambda: (self.get("inferencedeployment", "zero") or {}).get("spec", {}).get("replicas") == 1)

    def no_permission_errors(self) -> None:
        time.sleep(1.0)  # let the last requests reach the log
        self.until("no_permission_errors", lambda: True)
