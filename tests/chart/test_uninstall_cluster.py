"""`helm uninstall` never strands InferenceDeployments: the chart's pre-delete hook (a Job of the operator image,
run on the local fleet as a process like any infleet pod) refuses while they exist and says why; with
`uninstall.deleteDeployments=true` it deletes them while the operator still runs, and then everything goes,
including the namespace the deployments lived in."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from infleet.cluster.testing import FleetHandle, wait_for

from .helm import CHART, helm, set_args
from .operator_scenario import H100, idep, spec

pytestmark = pytest.mark.cluster


def get(fleet: FleetHandle, namespace: str, *args: str) -> Any:
    proc = fleet.kubectl("get", *args, "-n", namespace, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def ready(fleet: FleetHandle, namespace: str, name: str) -> bool:
    conds = ((get(fleet, namespace, "inferencedeployment", name) or {}).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


@pytest.fixture
def team(fleet: FleetHandle) -> Iterator[str]:
    """The namespace the InferenceDeployments live in; the test itself deletes it (it must not hang)."""
    name = f"team-{uuid.uuid4().hex[:6]}"
    fleet.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    fleet.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


def test_uninstall_refuses_then_deletes_the_deployments_first(fleet: FleetHandle, namespace: str, team: str) -> None:
    release = namespace
    values = {"operator": {"watchNamespaces": [team]}, "gateway": {"enabled": False}}
    proc = helm(
        "install", release, str(CHART), "--namespace", namespace, *set_args(values), kubeconfig=fleet.kubeconfig
    )
    assert proc.returncode == 0, proc.stderr
    scaled = spec({"type": H100}, scaling={"enabled": True, "minReplicas": 1, "maxReplicas": 2})
    for name, body in (("chat", spec({"type": H100})), ("code", scaled)):
        fleet.kubectl("apply", "-n", team, "-f", "-", input=yaml.safe_dump(idep(name, body)))
    wait_for(lambda: ready(fleet, team, "chat") and ready(fleet, team, "code"), timeout=120, what="both Ready")
    # the autoscaled one carries the operator's finalizer: without the operator, its namespace would never go
    assert "infleet.dev/operator" in get(fleet, team, "inferencedeployment", "code")["metadata"]["finalizers"]

    # refused: helm prints the hook's reason, and the release, its operator and the deployments all stay
    proc = helm("uninstall", release, "--namespace", namespace, "--wait", kubeconfig=fleet.kubeconfig, timeout=300)
    assert proc.returncode != 0
    assert "refusing to uninstall infleet: 2 InferenceDeployment(s) exist" in proc.stderr, proc.stderr
    assert f"{team}/chat, {team}/code" in proc.stderr and "uninstall.deleteDeployments=true" in proc.stderr
    # (helm records the release as "uninstalling" once it runs the hook, but removes nothing of it)
    status = helm("status", release, "--namespace", namespace, "-o", "json", kubeconfig=fleet.kubeconfig)
    assert json.loads(status.stdout)["info"]["status"] in ("deployed", "uninstalling")
    assert get(fleet, namespace, "deployment", f"{release}-infleet-operator")
    assert len(get(fleet, team, "inferencedeployments")["items"]) == 2
    # the refusing Job stays for `kubectl logs`; its ServiceAccount and rights are gone
    assert get(fleet, namespace, "job", f"{release}-infleet-uninstall")
    assert get(fleet, namespace, "serviceaccount", f"{release}-infleet-uninstall") is None
    assert get(fleet, team, "role", f"{release}-infleet-uninstall") is None

    # with the flag (after the rollback the message prescribes): the hook deletes the deployments while the
    # operator runs, then helm removes the rest
    assert f"helm rollback {release} 1 -n {namespace}" in proc.stderr
    assert helm("rollback", release, "1", "--namespace", namespace, kubeconfig=fleet.kubeconfig).returncode == 0
    proc = helm(
        "upgrade", release, str(CHART), "--namespace", namespace, "--reuse-values",
        "--set", "uninstall.deleteDeployments=true", kubeconfig=fleet.kubeconfig,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    proc = helm("uninstall", release, "--namespace", namespace, "--wait", kubeconfig=fleet.kubeconfig, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "deleting 2 InferenceDeployment(s)" in proc.stderr and "every InferenceDeployment is gone" in proc.stderr
    assert get(fleet, team, "inferencedeployments")["items"] == []
    assert get(fleet, team, "deployments,services")["items"] == []  # the runtime objects went with their owners
    selector = f"app.kubernetes.io/instance={release}"
    assert get(fleet, namespace, "deployments,jobs,serviceaccounts,roles", "-l", selector)["items"] == []
    assert fleet.kubectl("get", "clusterroles", "-l", selector, "-o", "name").stdout.strip() == ""

    fleet.kubectl("delete", "namespace", team, "--wait=false")
    wait_for(lambda: get(fleet, "default", "namespace", team) is None, timeout=120, what=f"namespace {team} deleted")
