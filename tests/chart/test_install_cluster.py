"""`helm install` into the local fleet: the operator and gateway run (as real processes, through the launcher)
under the chart's ServiceAccounts, the operator reconciles an InferenceDeployment, the gateway lists it, and
`helm uninstall` takes everything away again."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
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
    """Its process runs and passes its readiness probe (ContainersReady: the pod's Ready condition can lag while
    the node lifecycle controller catches up with a late node heartbeat on a loaded machine)."""
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "ContainersReady" and c["status"] == "True" for c in conditions)


@pytest.fixture
def release(fleet: FleetHandle, namespace: str) -> Iterator[str]:
    """The chart installed into the test namespace, watching only that namespace (the fleet is shared). The
    namespace enforces Pod Security "restricted", as `infleet-system` should in production: the API server's
    PodSecurity admission refuses any pod of the chart (or of the operator's runtime) that asks for more."""
    restricted = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    fleet.core.patch_namespace(namespace, {"metadata": {"labels": restricted}})
    values = {
        "operator": {"watchNamespaces": [namespace], "replicas": 2, "leaderElection": True},  # one leader, one standby
        # the local fleet's cluster DNS answers a Service name with its pods' IPs (ClusterIPs live on the host's
        # loopback, out of the pod network's reach), so a pod calling the Service by name needs port = targetPort
        # a team with a token limit: the gateway replicas read each other's charged tokens (the peers Service)
        "gateway": {
            "watchNamespaces": [namespace],
            "service": {"port": 8080},
            "teams": {"everyone": {"namespaces": [namespace], "outputTokensPerMinute": 100000}},
        },
    }
    args = ["install", namespace, str(CHART), "--namespace", namespace, *set_args(values)]
    proc = helm(*args, kubeconfig=fleet.kubeconfig, timeout=120)
    assert proc.returncode == 0, f"helm install failed:\n{proc.stdout}{proc.stderr}"
    assert "NOTES:" in proc.stdout and "kubectl apply -f" in proc.stdout  # the next step, printed

    def running() -> bool:
        ops, gws = pods(fleet, namespace, "operator"), pods(fleet, namespace, "gateway")
        return len(ops) == 2 and len(gws) == 2 and all(ready(p) for p in ops + gws)

    try:
        wait_for(running, timeout=120, what="the chart's operator and gateway pods")
    except AssertionError as err:
        state = fleet.kubectl("get", "pods,events", "-n", namespace, check=False).stdout
        raise AssertionError(f"{err}\n{state}") from None
    try:
        yield namespace
    finally:
        helm("uninstall", namespace, "--namespace", namespace, "--wait", kubeconfig=fleet.kubeconfig)


def test_install_runs_the_operator_under_the_chart_service_account(fleet: FleetHandle, release: str) -> None:
    ns = release
    operators = pods(fleet, ns, "operator")
    assert len(operators) == 2 and all(ready(p) for p in operators)
    for pod in operators:
        assert pod["spec"]["serviceAccountName"] == f"{release}-infleet-operator"
        assert pod["spec"]["containers"][0]["command"] == ["python", "-m", "infleet.operator", "run"]

    # the launcher hands each process a token of that ServiceAccount; both replicas take part in the election
    # through the KopfPeering (kopf.dev is granted only by the chart's Role)
    def two_peers() -> bool:
        peering = get(fleet, ns, "kopfpeering", "infleet-operator") or {}
        return len(peering.get("status") or {}) == 2

    wait_for(two_peers, timeout=45, what="two operator replicas in the KopfPeering")

    fleet.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(idep("chat", spec({"type": H100}))))

    def idep_ready() -> bool:
        body = get(fleet, ns, "inferencedeployment", "chat") or {}
        conds = (body.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

    wait_for(idep_ready, timeout=60, what="InferenceDeployment chat Ready under the chart's operator")
    assert get(fleet, ns, "deployment", "chat")["spec"]["template"]["spec"]["containers"][0]["ports"][0]["name"]

    gateways = wait_for(lambda: [p for p in pods(fleet, ns, "gateway") if ready(p)], timeout=60, what="gateway")
    gateway = gateways[0]
    assert all(g["spec"]["serviceAccountName"] == f"{release}-infleet-gateway" for g in gateways)
    url = f"http://{gateway['status']['podIP']}:8080/v1/models"

    def listed_all() -> list[str] | None:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return [m["id"] for m in json.loads(resp.read())["data"]]
        except OSError:
            return None

    def listed() -> list[str] | None:
        names = listed_all()
        return names if names and "smollm2" in names else None

    wait_for(listed, timeout=30, what="the gateway listing the deployment's served name")
    # scale from zero under both ServiceAccounts: the gateway holds a request and records the demand on the
    # InferenceDeployment (patch), the operator's autoscaler turns it into a replica (the scale subresource)
    zero = spec({"type": H100}, replicas=0, scaling={"enabled": True, "minReplicas": 0, "maxReplicas": 1})
    zero["model"]["servedName"] = "smollm2-sleepy"
    fleet.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(idep("sleepy", zero)))
    body = json.dumps({"model": "smollm2-sleepy", "prompt": "hi", "max_tokens": 1}).encode()
    wait_for(lambda: "smollm2-sleepy" in (listed_all() or []), timeout=30, what="the gateway listing smollm2-sleepy")
    request = urllib.request.Request(
        url.replace("/v1/models", "/v1/completions"), body, {"Content-Type": "application/json"}
    )
    with contextlib.suppress(OSError):  # the fake replica cannot answer; only the scale-up matters here
        urllib.request.urlopen(request, timeout=3).close()

    def scaled_up() -> bool:
        obj = get(fleet, ns, "inferencedeployment", "sleepy") or {}
        annotations = obj.get("metadata", {}).get("annotations") or {}
        return "infleet.dev/scale-from-zero-requested" in annotations and obj["spec"]["replicas"] == 1

    wait_for(scaled_up, timeout=45, what="scale from zero: the gateway's annotation and the operator's /scale")

    slices = get(fleet, ns, "endpointslices", "-l", f"kubernetes.io/service-name={release}-infleet-gateway")
    addresses = [a for s in slices["items"] for e in s.get("endpoints") or [] for a in e["addresses"]]
    assert sorted(addresses) == sorted(g["status"]["podIP"] for g in pods(fleet, ns, "gateway"))

    # `helm test`: a pod of the chart lists the models through the gateway's Service, under "restricted" too
    proc = helm("test", release, "--namespace", ns, kubeconfig=fleet.kubeconfig, timeout=180)
    assert proc.returncode == 0 and "Phase:          Succeeded" in proc.stdout, proc.stdout + proc.stderr
    test_pod = fleet.kubectl("logs", f"{release}-infleet-test-models", "-n", ns).stdout  # as a user reads it
    assert test_pod.startswith('200 {"object":"list"') and "smollm2" in test_pod, test_pod


def test_losing_a_gateway_replica_fails_only_its_requests_in_flight(fleet: FleetHandle, release: str) -> None:
    """Clients reach the gateway through its Service; one of its two pods is killed under load. Requests that
    were not on that pod never fail, and the official client's own retry carries every request through."""
    ns = release
    wait_for(lambda: len([p for p in pods(fleet, ns, "gateway") if ready(p)]) == 2, timeout=60, what="2 gateways")
    # first, each replica finds the other through the headless peers Service (cluster DNS gives every ready pod)
    wait_for(lambda: peers_read(fleet, ns) == [1.0, 1.0], timeout=60, what="each gateway reading the other's tokens")
    svc = get(fleet, ns, "service", f"{release}-infleet-gateway")
    base = f"http://{svc['spec']['clusterIP']}:{svc['spec']['ports'][0]['port']}/v1"
    client = openai.OpenAI(base_url=base, api_key="unused", max_retries=2, timeout=10)
    results: list[tuple[float, bool]] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                client.models.list()
                results.append((time.monotonic(), True))
            except openai.OpenAIError:
                results.append((time.monotonic(), False))

    threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: len(results) >= 40, timeout=60, what="traffic through the gateway Service")
    victim = pods(fleet, ns, "gateway")[0]["metadata"]["name"]
    fleet.kubectl("delete", "pod", victim, "-n", ns, "--grace-period=0", "--force", "--wait=false")
    killed_at = time.monotonic()
    wait_for(lambda: len([r for r in results if r[0] > killed_at]) >= 80, timeout=120, what="traffic after the kill")
    stop.set()
    for t in threads:
        t.join(timeout=30)
    after = [ok for at, ok in results if at > killed_at]
    assert all(ok for _, ok in results), f"{sum(not ok for _, ok in results)} of {len(results)} requests failed"
    assert len(after) >= 80


def peers_read(fleet: FleetHandle, namespace: str) -> list[float]:
    """Each gateway pod's `infleet_gateway_peers`: the other replicas it read at its last token sync."""
    found = []
    for pod in pods(fleet, namespace, "gateway"):
        with urllib.request.urlopen(f"http://{pod['status']['podIP']}:8080/metrics", timeout=10) as r:
            lines = r.read().decode().splitlines()
        found += [float(x.split()[-1]) for x in lines if x.startswith("infleet_gateway_peers ")]
    return found


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


def test_install_refuses_bad_values_with_the_schema_message(fleet: FleetHandle, namespace: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump({"operator": {"replicas": 2, "leaderElection": False}, "gpuPrices": {"NVIDIA-L4": -1}})
    )
    proc = helm(
        "install", namespace, str(CHART), "--namespace", namespace, "--values", str(bad), kubeconfig=fleet.kubeconfig
    )
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert "at '/operator/leaderElection'" in proc.stderr and "at '/gpuPrices/NVIDIA-L4'" in proc.stderr
    assert helm("status", namespace, "--namespace", namespace, kubeconfig=fleet.kubeconfig).returncode != 0
