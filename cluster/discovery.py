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
