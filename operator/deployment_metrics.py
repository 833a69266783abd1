"""The per-InferenceDeployment gauges the chart's dashboards read (`infleet.monitoring.names`), from status.

One series per deployment, labelled `namespace` and `deployment` (the scrape config honours them, so they win over
the operator pod's own namespace): current replicas (`status.replicas`: pods of any revision, what is billed),
desired replicas (`spec.replicas`), the tier as an info series (value 1, label `tier`; a tier change replaces the
series, which the dashboards' tier-change annotation detects) and `status.costPerMillionTokens` while it is known.

Fed by a watch on InferenceDeployments: no API call, and every writer of status (reconcile, workload events, the
autoscaler) is reflected without each having to remember the gauges. A deleted deployment's series are removed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf
from prometheus_client import Gauge

from infleet.monitoring import names
from infleet.operator import api

LABELS = (names.NAMESPACE, names.DEPLOYMENT)
REPLICAS = Gauge(names.DEPLOYMENT_REPLICAS, "Replicas of the InferenceDeployment that exist (any revision)", LABELS)
DESIRED = Gauge(names.DEPLOYMENT_DESIRED_REPLICAS, "Replicas the InferenceDeployment asks for (spec.replicas)", LABELS)
TIER = Gauge(names.DEPLOYMENT_TIER_INFO, "The quantization tier rolled out (value 1)", (*LABELS, names.TIER))
COST = Gauge(names.DEPLOYMENT_COST, "Observed $ per 1M tokens served (status.costPerMillionTokens)", LABELS)

_tiers: dict[tuple[str, str], str] = {}  # the tier each deployment's info series carries now


def export(namespace: str, name: str, body: Mapping[str, Any]) -> None:
    spec = body.get("spec") or {}
    st = body.get("status") or {}
    key = (namespace, name)
    REPLICAS.labels(namespace, name).set(st.get("replicas") or 0)
    DESIRED.labels(namespace, name).set(spec.get("replicas", 1))
    tier = st.get("tier")
    previous = _tiers.get(key)
    if previous is not None and previous != tier:
        TIER.remove(namespace, name, previous)
        del _tiers[key]
    if tier:
        TIER.labels(namespace, name, tier).set(1)
        _tiers[key] = tier
    cost = st.get("costPerMillionTokens")
    if cost is None:
        _remove(COST, namespace, name)
    else:
        COST.labels(namespace, name).set(float(cost))


def forget(namespace: str, name: str) -> None:
    for gauge in (REPLICAS, DESIRED, COST):
        _remove(gauge, namespace, name)
    tier = _tiers.pop((namespace, name), None)
    if tier is not None:
        TIER.remove(namespace, name, tier)


def _remove(gauge: Gauge, *labels: str) -> None:
    try:
        gauge.remove(*labels)
    except KeyError:  # never set
        pass


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL, id="deployment-gauges")
def deployment_gauges(type: str | None, body: kopf.Body, name: str, namespace: str | None, **_: Any) -> None:
    if namespace is None:
        return
    if type == "DELETED" or body.get("metadata", {}).get("deletionTimestamp"):
        forget(namespace, name)
    else:
        export(namespace, name, body)
