"""`helm install` into the local fleet: the operator and gateway run (as real processes, through the launcher)
under the chart's ServiceAccounts, the operator reconciles an InferenceDeployment, the gateway lists it, and
`helm uninstall` takes everything away again."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from infleet.cluster.testing import FleetHandle, wait_for

from .helm import CHART, helm, set_args
from .operator_scenario import H100, idep, spec

pytestmark = pytest.mark.cluster


def get(fleet: FleetHandle, namespace: str, *args: str) -> Any:
    proc = fleet.kubectl("get", *args, "-n", namespace, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def pods(fleet: FleetHandle, namespace: str, component: str) -> list[dict[str, Any]]:
    found = get(fleet, namespace, "pods", "-l", f"app.kubernetes.io/name=infleet-{component}") or {"items": []}
    return list(found["items"])


def ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


@pytest.fixture
def release(fleet: FleetHandle, namespace: str) -> Iterator[str]:
    """The chart installed into the test namespace, watching only that namespace (the fleet is shared)."""
    values = {
        "operator": {"watchNamespaces": [namespace]},
        "gateway": {"watchNamespaces": [namespace]},
    }
    args = ["install", namespace, str(CHART), "--namespace", namespace, *set_args(values), "--wait", "--timeout=120s"]
    proc = helm(*args, kubeconfig=fleet.kubeconfig, timeout=180)
    if proc.returncode != 0:
        state = fleet.kubectl("get", "pods,events", "-n", namespace, check=False).stdout
        raise AssertionError(f"helm install failed:\n{proc.stdout}{proc.stderr}\n{state}")
    assert "NOTES:" in proc.stdout and "kubectl apply -f" in proc.stdout  # the next step, printed
    try:
        yield namespace
    finally:
        helm("uninstall", namespace, "--namespace", namespace, "--wait", kubeconfig=fleet.kubeconfig)


def test_install_runs_the_operator_under_the_chart_service_account(fleet: FleetHandle, release: str) -> None:
    ns = release
    (operator,) = pods(fleet, ns, "operator")
    assert ready(operator)
    assert operator["spec"]["serviceAccountName"] == f"{release}-infleet-operator"
    assert operator["spec"]["containers"][0]["command"] == ["python", "-m", "infleet.operator", "run"]
    # the launcher hands the process a token of that ServiceAccount: the peering object it created proves it
    # acted (kopf.dev is granted only through the chart's Role)
    wait_for(lambda: get(fleet, ns, "kopfpeering", "infleet-operator"), timeout=30, what="the operator's KopfPeering")

    fleet.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(idep("chat", spec({"type": H100}))))

    def idep_ready() -> bool:
        body = get(fleet, ns, "inferencedeployment", "chat") or {}
        conds = (body.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

    wait_for(idep_ready, timeout=60, what="InferenceDeployment chat Ready under the chart's operator")
    assert get(fleet, ns, "deployment", "chat")["spec"]["template"]["spec"]["containers"][0]["ports"][0]["name"]

    (gateway,) = wait_for(lambda: [p for p in pods(fleet, ns, "gateway") if ready(p)], timeout=60, what="gateway")
    assert gateway["spec"]["serviceAccountName"] == f"{release}-infleet-gateway"
    url = f"http://{gateway['status']['podIP']}:8080/v1/models"

    def listed() -> list[str] | None:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                names = [m["id"] for m in json.loads(resp.read())["data"]]
        except OSError:
            return None
        return names if "smollm2" in names else None

    wait_for(listed, timeout=30, what="the gateway listing the deployment's served name")
    slices = get(fleet, ns, "endpointslices", "-l", f"kubernetes.io/service-name={release}-infleet-gateway")
    addresses = [a for s in slices["items"] for e in s.get("endpoints") or [] for a in e["addresses"]]
    assert addresses == [gateway["status"]["podIP"]]


def test_uninstall_leaves_nothing_of_the_release(fleet: FleetHandle, namespace: str) -> None:
    args = ["install", namespace, str(CHART), "--namespace", namespace]
    args += [*set_args({"operator": {"watchNamespaces": [namespace]}, "gateway": {"enabled": False}})]
    proc = helm(*args, kubeconfig=fleet.kubeconfig, timeout=120)
    assert proc.returncode == 0, proc.stderr
    selector = f"app.kubernetes.io/instance={namespace}"
    kinds = "deployments,serviceaccounts,configmaps,roles,rolebindings"
    assert get(fleet, namespace, kinds, "-l", selector)["items"]
    assert helm("uninstall", namespace, "--namespace", namespace, "--wait", kubeconfig=fleet.kubeconfig).returncode == 0
    assert get(fleet, namespace, kinds, "-l", selector)["items"] == []
    cluster = fleet.kubectl("get", "clusterroles,clusterrolebindings", "-l", selector, "-o", "name").stdout
    assert cluster.strip() == ""
