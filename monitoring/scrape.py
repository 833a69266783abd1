"""Prometheus scrape configuration: Kubernetes pod discovery that turns pod metadata into the target labels the rules
and dashboards group by (`infleet.api.metrics`).

A pod is scraped when annotated `prometheus.io/scrape: "true"`; `prometheus.io/port` and `prometheus.io/path`
override the address and path. The same job works for a Prometheus inside the cluster (in-cluster service account)
and one outside it (`kubeconfig_file`, as the local fleet runs it; pod IPs must then be reachable from it).

Debian's `prometheus` package is built without Kubernetes discovery, so `file_sd_job` plus `pod_target` offer the
same targets and labels through a file that something listing pods keeps up to date (the local fleet does that).

`honor_labels` is on because the operator's gauges carry the `namespace` and `deployment` of the
InferenceDeployment they describe, which must win over the operator pod's own namespace.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from infleet.api.metrics import DEPLOYMENT, NAMESPACE, POD, POD_LABEL_DEPLOYMENT, POD_LABEL_TIER, TIER

JOB = "infleet-pods"
SCRAPE_ANNOTATION = "prometheus.io/scrape"
PORT_ANNOTATION = "prometheus.io/port"
PATH_ANNOTATION = "prometheus.io/path"


def meta_label(kind: str, name: str) -> str:
    """The discovery meta label for a pod label or annotation (`infleet.dev/tier` -> `..._infleet_dev_tier`)."""
    return f"__meta_kubernetes_pod_{kind}_" + re.sub(r"[^a-zA-Z0-9_]", "_", name)


def relabel_configs() -> list[dict[str, Any]]:
    """Keep annotated running pods; map namespace, pod name and the infleet pod labels onto target labels."""
    return [
        {"source_labels": [meta_label("annotation", SCRAPE_ANNOTATION)], "regex": "true", "action": "keep"},
        {
            "source_labels": ["__meta_kubernetes_pod_phase"],
            "regex": "Pending|Succeeded|Failed|Unknown",
            "action": "drop",
        },
        {
            "source_labels": [meta_label("annotation", PATH_ANNOTATION)],
            "regex": "(.+)",
            "target_label": "__metrics_path__",
            "action": "replace",
        },
        {
            "source_labels": ["__address__", meta_label("annotation", PORT_ANNOTATION)],
            "regex": r"(.+?)(?::\d+)?;(\d+)",
            "replacement": "$1:$2",
            "target_label": "__address__",
            "action": "replace",
        },
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": NAMESPACE, "action": "replace"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": POD, "action": "replace"},
        {"source_labels": [meta_label("label", POD_LABEL_DEPLOYMENT)], "target_label": DEPLOYMENT, "action": "replace"},
        {"source_labels": [meta_label("label", POD_LABEL_TIER)], "target_label": TIER, "action": "replace"},
    ]


def metric_relabel_configs() -> list[dict[str, Any]]:
    """Restore vLLM's `vllm:` prefix. Some prometheus_client versions write `vllm_x` instead of `vllm:x` in the
    OpenMetrics format that Prometheus prefers, so one vLLM can appear under either spelling; rules read `vllm:`."""
    return [{"source_labels": ["__name__"], "regex": "vllm_(.+)", "target_label": "__name__", "replacement": "vllm:$1"}]


def pod_job(
    kubeconfig: str | None = None, namespaces: list[str] | None = None, scrape_interval: str = "15s"
) -> dict[str, Any]:
    """The pod-discovery job; `kubeconfig` for a Prometheus outside the cluster, None inside it."""
    sd: dict[str, Any] = {"role": "pod"}
    if kubeconfig:
        sd["kubeconfig_file"] = kubeconfig
    if namespaces:
        sd["namespaces"] = {"names": list(namespaces)}
    return {
        "job_name": JOB,
        "scrape_interval": scrape_interval,
        "honor_labels": True,
        "kubernetes_sd_configs": [sd],
        "relabel_configs": relabel_configs(),
        "metric_relabel_configs": metric_relabel_configs(),
    }


def pod_target(pod: Mapping[str, Any], default_port: int = 8000) -> dict[str, Any] | None:
    """The file_sd entry that pod discovery plus `relabel_configs` would make of a pod (API JSON), or None if it
    is not scraped (not annotated, not running, or without an IP yet)."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    annotations, labels = meta.get("annotations") or {}, meta.get("labels") or {}
    if annotations.get(SCRAPE_ANNOTATION) != "true" or status.get("phase") != "Running" or not status.get("podIP"):
        return None
    port = annotations.get(PORT_ANNOTATION) or default_port
    target_labels = {NAMESPACE: meta.get("namespace", ""), POD: meta.get("name", "")}
    for label, pod_label in ((DEPLOYMENT, POD_LABEL_DEPLOYMENT), (TIER, POD_LABEL_TIER)):
        if labels.get(pod_label):
            target_labels[label] = labels[pod_label]
    if annotations.get(PATH_ANNOTATION):
        target_labels["__metrics_path__"] = annotations[PATH_ANNOTATION]
    return {"targets": [f"{status['podIP']}:{port}"], "labels": target_labels}


def file_sd_job(files: list[str], scrape_interval: str = "15s", refresh: str = "5s") -> dict[str, Any]:
    """The pod job for a Prometheus without Kubernetes discovery: targets come from `pod_target` entries in files."""
    return {
        "job_name": JOB,
        "scrape_interval": scrape_interval,
        "honor_labels": True,
        "file_sd_configs": [{"files": list(files), "refresh_interval": refresh}],
        "metric_relabel_configs": metric_relabel_configs(),
    }


def static_job(
    job_name: str, targets: list[str], labels: dict[str, str], scrape_interval: str = "15s"
) -> dict[str, Any]:
    """A job with fixed targets and the labels discovery would have given them (for tests and bare hosts)."""
    return {
        "job_name": job_name,
        "scrape_interval": scrape_interval,
        "honor_labels": True,
        "static_configs": [{"targets": list(targets), "labels": dict(labels)}],
        "metric_relabel_configs": metric_relabel_configs(),
    }


def prometheus_config(
    jobs: list[dict[str, Any]], rule_files: list[str] | None = None, interval: str = "15s"
) -> dict[str, Any]:
    """A whole prometheus.yml."""
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": list(rule_files or []),
        "scrape_configs": jobs,
    }
