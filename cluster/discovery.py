"""Prometheus service discovery for the local fleet, served by the node agent over HTTP (`http_sd_configs`).

Debian's Prometheus is built without Kubernetes discovery, so the agent, which watches every scheduled pod
anyway, answers with the target groups Kubernetes pod discovery (`role: pod`) would give: one target per
declared container port (or the bare pod IP), with the same `__meta_kubernetes_*` labels. The scrape job's
relabelling is therefore the one a real cluster uses (`infleet.monitoring.scrape.relabel_configs`).
"""

from __future__ import annotations

from typing import Any

from kubernetes import client

from infleet.monitoring.scrape import meta_label


def pod_target_groups(pod: client.V1Pod) -> list[dict[str, Any]]:
    ip = pod.status.pod_ip if pod.status else None
    if not ip:
        return []
    meta = pod.metadata
    ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
    labels: dict[str, str] = {
        "__meta_kubernetes_namespace": meta.namespace,
        "__meta_kubernetes_pod_name": meta.name,
        "__meta_kubernetes_pod_ip": ip,
        "__meta_kubernetes_pod_uid": meta.uid,
        "__meta_kubernetes_pod_phase": pod.status.phase or "",
        "__meta_kubernetes_pod_ready": str(ready).lower(),
        "__meta_kubernetes_pod_node_name": pod.spec.node_name or "",
        "__meta_kubernetes_pod_host_ip": pod.status.host_ip or "",
    }
    for kind, values in (("label", meta.labels or {}), ("annotation", meta.annotations or {})):
        for key, value in values.items():
            labels[meta_label(kind, key)] = value
            labels[meta_label(f"{kind}present", key)] = "true"
    groups = []
    for container in pod.spec.containers:
        for port in container.ports or []:
            groups.append(
                {
                    "targets": [f"{ip}:{port.container_port}"],
                    "labels": {
                        **labels,
                        "__meta_kubernetes_pod_container_name": container.name,
                        "__meta_kubernetes_pod_container_port_name": port.name or "",
                        "__meta_kubernetes_pod_container_port_number": str(port.container_port),
                        "__meta_kubernetes_pod_container_port_protocol": port.protocol or "TCP",
                    },
                }
            )
    return groups or [{"targets": [ip], "labels": labels}]


def resolve(core: client.CoreV1Api, pods: list[client.V1Pod], name: str, namespace: str) -> list[str]:
    """Cluster DNS for launched pods, as kube-dns answers it, but always with pod IPs (ClusterIPs live on the
    host's loopback, which the pod network cannot reach): `<svc>.<ns>.svc[.cluster.local]` gives the Service's
    ready endpoints, `<hostname>.<subdomain>.<ns>.svc[.cluster.local]` a StatefulSet-style pod, and `<svc>` or
    `<svc>.<ns>` are completed from the asking pod's namespace."""
    parts = name.rstrip(".").removesuffix(".cluster.local").removesuffix(".svc").split(".")
    if len(parts) == 1:
        parts.append(namespace)
    if len(parts) == 3:
        hostname, subdomain, ns = parts
        return [
            p.status.pod_ip
            for p in pods
            if p.metadata.namespace == ns
            and (p.spec.hostname or p.metadata.name) == hostname
            and p.spec.subdomain == subdomain
            and p.status.pod_ip
        ]
    if len(parts) != 2:
        return []
    service, ns = parts
    slices = client.DiscoveryV1Api(core.api_client).list_namespaced_endpoint_slice(
        ns, label_selector=f"kubernetes.io/service-name={service}"
    )
    return [
        address
        for s in slices.items
        for e in s.endpoints or []
        if e.conditions is None or e.conditions.ready is not False
        for address in e.addresses
    ]
