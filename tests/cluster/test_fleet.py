"""The local fleet against its acceptance checks: scheduling on simulated GPU nodes, real processes for
infleet's images, Services, ServiceAccount tokens with RBAC, probes, restarts, deletion and GC."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import urllib.request
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from infleet.cluster.controlplane import process_alive
from infleet.cluster.testing import FleetHandle, wait_for

pytestmark = pytest.mark.cluster


def deployment(name: str, container: dict[str, Any], replicas: int = 1, **pod_spec: Any) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container], **pod_spec}},
        },
    }


def apply(fleet: FleetHandle, namespace: str, *objects: dict[str, Any]) -> None:
    fleet.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(objects))


def pods(fleet: FleetHandle, namespace: str, selector: str) -> list[client.V1Pod]:
    return list(fleet.core.list_namespaced_pod(namespace, label_selector=selector).items)


def ready(pod: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def test_gpu_pods_land_on_the_requested_gpu_type_only(fleet: FleetHandle, namespace: str) -> None:
    container = {
        "name": "main",
        "image": "registry.local/fake:1",
        "resources": {"limits": {"nvidia.com/gpu": "8"}},
    }
    apply(
        fleet,
        namespace,
        deployment("h100", container, replicas=3, nodeSelector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}),
    )

    def three_running() -> list[client.V1Pod] | None:
        running = [p for p in pods(fleet, namespace, "app=h100") if p.status.phase == "Running"]
        return running if len(running) == 3 else None

    running = wait_for(three_running, what="3 running H100 pods")
    for pod in running:
        node = fleet.core.read_node(pod.spec.node_name)
        assert node.metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert len({p.spec.node_name for p in running}) == 3, "8 GPUs each: one pod per 8-GPU node"


def test_a_pod_asking_more_gpus_than_any_node_has_stays_pending(fleet: FleetHandle, namespace: str) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "too-big"},
        "spec": {
            "containers": [
                {"name": "main", "image": "registry.local/fake:1", "resources": {"limits": {"nvidia.com/gpu": "9"}}}
            ]
        },
    }
    apply(fleet, namespace, pod)
    event = wait_for(
        lambda: [
            e
            for e in fleet.core.list_namespaced_event(namespace).items
            if e.reason == "FailedScheduling" and e.involved_object.name == "too-big"
        ],
        what="a FailedScheduling event",
    )[0]
    assert "nvidia.com/gpu" in event.message
    assert fleet.core.read_namespaced_pod("too-big", namespace).status.phase == "Pending"


HTTP_SERVER = {
    "name": "web",
    "image": "infleet/python:latest",
    "command": ["python", "-m", "http.server", "8000"],
    "ports": [{"containerPort": 8000, "name": "http"}],
    "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
}


def test_a_launched_pod_is_a_real_server_behind_its_service(fleet: FleetHandle, namespace: str) -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }
    apply(fleet, namespace, deployment("web", HTTP_SERVER, replicas=2), service)

    def two_ready() -> list[client.V1Pod] | None:
        ready_pods = [p for p in pods(fleet, namespace, "app=web") if ready(p)]
        return ready_pods if len(ready_pods) == 2 else None

    ready_pods = wait_for(two_ready, what="2 ready web pods")
    ips = {p.status.pod_ip for p in ready_pods}
    assert len(ips) == 2, "each pod has its own IP"
    for ip in ips:
        assert "Directory listing" in http_get(f"http://{ip}:8000/")

    def slice_ips() -> set[str]:
        slices = client.DiscoveryV1Api(fleet.api).list_namespaced_endpoint_slice(
            namespace, label_selector="kubernetes.io/service-name=web"
        )
        return {a for s in slices.items for e in s.endpoints or [] for a in e.addresses}

    wait_for(lambda: slice_ips() == ips, what="the EndpointSlice to list both pod IPs")
    cluster_ip = fleet.core.read_namespaced_service("web", namespace).spec.cluster_ip
    assert "Directory listing" in wait_for(lambda: _try_get(f"http://{cluster_ip}:80/"), what="the Service to answer")


def _try_get(url: str) -> str | None:
    try:
        return http_get(url)
    except OSError:
        return None


LIST_PODS = textwrap.dedent(
    """
    import sys
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException
    config.load_kube_config()
    try:
        client.CoreV1Api().list_namespaced_pod(sys.argv[1])
    except ApiException as err:
        print("status", err.status)
        sys.exit(3 if err.status == 403 else 1)
    print("status 200")
    """
)


def run_as(fleet: FleetHandle, namespace: str, name: str, service_account: str) -> client.V1Pod:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "serviceAccountName": service_account,
            "restartPolicy": "Never",
            "containers": [
                {"name": "main", "image": "infleet/python:latest", "command": ["python", "-c", LIST_PODS, namespace]}
            ],
        },
    }
    apply(fleet, namespace, pod)

    def finished() -> client.V1Pod | None:
        p = fleet.core.read_namespaced_pod(name, namespace)
        return p if p.status.phase in ("Succeeded", "Failed") else None

    return wait_for(finished, what=f"pod {name} to finish")


def test_a_pods_service_account_token_carries_exactly_its_rbac_rights(fleet: FleetHandle, namespace: str) -> None:
    sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}}
    apply(fleet, namespace, sa)
    denied = run_as(fleet, namespace, "before-role", "reader")
    assert denied.status.container_statuses[0].state.terminated.exit_code == 3, "403 without RBAC rights"

    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "reader-reads-pods"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
    }
    apply(fleet, namespace, role, binding)
    allowed = run_as(fleet, namespace, "after-role", "reader")
    assert allowed.status.phase == "Succeeded"


def launched_pid(fleet: FleetHandle, pod: client.V1Pod, container: str = "web") -> int:
    meta = pod.metadata
    pid_file = fleet.fleet.dir / "pods" / f"{meta.namespace}_{meta.name}_{meta.uid}" / f"{container}.pid"
    return int(pid_file.read_text())


def test_killed_process_restarts_and_deleted_pod_stops(fleet: FleetHandle, namespace: str) -> None:
    apply(fleet, namespace, deployment("web", HTTP_SERVER))
    pod = wait_for(lambda: next((p for p in pods(fleet, namespace, "app=web") if ready(p)), None), what="a ready pod")
    pid = launched_pid(fleet, pod)
    os.kill(pid, signal.SIGKILL)

    def restarted() -> client.V1Pod | None:
        p = fleet.core.read_namespaced_pod(pod.metadata.name, namespace)
        return p if p.status.container_statuses[0].restart_count >= 1 and ready(p) else None

    wait_for(restarted, what="a restart after the process was killed")
    out = fleet.kubectl("get", "pods", "-n", namespace, "-o", "wide").stdout
    assert pod.metadata.name in out and "Running" in out
    assert any(line.split()[3] == "1" for line in out.splitlines()[1:]), f"RESTARTS column shows 1:\n{out}"

    new_pid = launched_pid(fleet, pod)
    assert new_pid != pid and process_alive(new_pid)
    fleet.core.delete_namespaced_pod(pod.metadata.name, namespace)
    wait_for(lambda: not process_alive(new_pid), what="the process to stop after the pod was deleted")
    wait_for(lambda: _gone(fleet, namespace, pod.metadata.name), what="the pod object to go")


def _gone(fleet: FleetHandle, namespace: str, name: str) -> bool:
    try:
        fleet.core.read_namespaced_pod(name, namespace)
    except ApiException as err:
        return err.status == 404
    return False


def test_failing_readiness_probe_keeps_a_pod_unready(fleet: FleetHandle, namespace: str) -> None:
    broken = {**HTTP_SERVER, "readinessProbe": {"httpGet": {"path": "/", "port": 8001}, "periodSeconds": 1}}
    apply(fleet, namespace, deployment("web", broken))
    pod = wait_for(
        lambda: next((p for p in pods(fleet, namespace, "app=web") if p.status.phase == "Running"), None),
        what="a running pod",
    )
    ip = pod.status.pod_ip
    wait_for(lambda: _try_get(f"http://{ip}:8000/"), what="the process to serve")
    pod = fleet.core.read_namespaced_pod(pod.metadata.name, namespace)
    assert not ready(pod)
    assert pod.status.container_statuses[0].ready is False


def test_deleting_a_namespace_completes(fleet: FleetHandle) -> None:
    name = "t-gc-" + os.urandom(3).hex()
    fleet.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_for(lambda: fleet.core.list_namespaced_service_account(name).items, what="default ServiceAccount")
    apply(fleet, name, deployment("web", HTTP_SERVER), deployment("fake", {"name": "c", "image": "registry.local/x:1"}))
    wait_for(lambda: len([p for p in fleet.core.list_namespaced_pod(name).items if ready(p)]) == 2, what="2 ready pods")
    pids = [launched_pid(fleet, p) for p in fleet.core.list_namespaced_pod(name, label_selector="app=web").items]
    fleet.core.delete_namespace(name)

    def namespace_gone() -> bool:
        try:
            fleet.core.read_namespace(name)
        except ApiException as err:
            return err.status == 404
        return False

    wait_for(namespace_gone, timeout=120, what="namespace deletion to complete")
    assert not any(process_alive(p) for p in pids)


def test_cluster_env_prints_a_working_kubeconfig(fleet: FleetHandle) -> None:
    from infleet.cluster.__main__ import env_lines

    lines = env_lines(fleet.fleet)
    assert lines[0] == f"export KUBECONFIG={fleet.kubeconfig}"
    version = json.loads(fleet.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == "v1.37.0"
    assert version["clientVersion"]["gitVersion"] == "v1.37.0"


FETCH = textwrap.dedent(
    """
    import sys, urllib.request
    for name in sys.argv[1:]:
        print(name, urllib.request.urlopen(f"http://{name}:8000/", timeout=5).status)
    """
)


def test_launched_pods_resolve_cluster_dns_names(fleet: FleetHandle, namespace: str) -> None:
    server = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-0", "labels": {"app": "web"}},
        "spec": {"hostname": "web-0", "subdomain": "web", "containers": [HTTP_SERVER]},
    }
    headless = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"clusterIP": "None", "selector": {"app": "web"}, "ports": [{"name": "http", "port": 8000}]},
    }
    apply(fleet, namespace, server, headless)
    wait_for(lambda: ready(fleet.core.read_namespaced_pod("web-0", namespace)), what="web-0 ready")
    names = [f"web-0.web.{namespace}.svc.cluster.local", f"web.{namespace}.svc", f"web.{namespace}.svc.cluster.local"]
    client_pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "fetch"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "infleet/python", "command": ["python", "-c", FETCH, *names]}],
        },
    }
    wait_for(
        lambda: client.DiscoveryV1Api(fleet.api).list_namespaced_endpoint_slice(namespace).items[0].endpoints,
        what="the headless Service's endpoints",
    )
    apply(fleet, namespace, client_pod)

    def finished() -> client.V1Pod | None:
        p = fleet.core.read_namespaced_pod("fetch", namespace)
        return p if p.status.phase in ("Succeeded", "Failed") else None

    pod = wait_for(finished, what="the fetching pod to finish")
    log = fleet.kubectl("logs", "fetch", "-n", namespace, check=False).stdout  # launched pods keep logs locally
    assert pod.status.phase == "Succeeded", log
