"""The fleet's Prometheus finds annotated pods through the agent's discovery and labels their series by deployment."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Any

import pytest
import yaml

from infleet.cluster.testing import FleetHandle, wait_for

pytestmark = pytest.mark.cluster

EXPORTER = """
import time
from prometheus_client import Counter, start_http_server
Counter("infleet_prompt_tokens", "tokens", ["model_name"]).labels("demo").inc(42)
start_http_server(8000)
while True:
    time.sleep(60)
"""


def query(fleet: FleetHandle, promql: str) -> list[dict[str, Any]]:
    url = f"{fleet.fleet.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as resp:
        return list(json.load(resp)["data"]["result"])


def test_prometheus_scrapes_annotated_pods_with_deployment_labels(fleet: FleetHandle, namespace: str) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "exporter",
            "labels": {"infleet.dev/deployment": "demo", "infleet.dev/tier": "int8"},
            "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "8000"},
        },
        "spec": {"containers": [{"name": "main", "image": "infleet/python", "command": ["python", "-c", EXPORTER]}]},
    }
    ignored = {**pod, "metadata": {**pod["metadata"], "name": "not-annotated", "annotations": {}}}
    fleet.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all([pod, ignored]))
    series = wait_for(
        lambda: query(fleet, f'infleet_prompt_tokens_total{{namespace="{namespace}"}}'),
        timeout=90,
        what="the exporter's series in Prometheus",
    )
    assert len(series) == 1, "only the annotated pod is scraped"
    labels = series[0]["metric"]
    assert (labels["deployment"], labels["tier"], labels["pod"]) == ("demo", "int8", "exporter")
    assert float(series[0]["value"][1]) == 42
