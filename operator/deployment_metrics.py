"""The per-InferenceDeployment gauges the chart's rules and dashboards read (`infleet.api.metrics`).

One series per deployment, labelled `namespace` and `deployment` (the scrape config honours them, so they win over
the operator pod's own namespace): current replicas (`status.replicas`: pods of any revision, what is billed),
desired replicas (the autoscaler's decision in `status.desiredReplicas`, applied or advisory, else `spec.replicas`),
the tier and the autoscaler's desired tier as info series (value 1, label `tier`; a tier change replaces the
series, which the dashboards' tier-change annotation detects), `status.costPerMillionTokens` while it is known, and
the spec's own objectives (SLO thresholds per SLI, objective, budget period, cost limit), which the generic rules
join on so that each deployment is judged against its own SLO.

Fed by a watch on InferenceDeployments: no API call, and every writer of status (reconcile, workload events, the
autoscaler) is reflected without each having to remember the gauges. A deleted deployment's series are removed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf
from prometheus_client import Gauge

from infleet.api import durations
from infleet.api import metrics as names
from infleet.api.tiers import TIERS
from infleet.operator import api

LABELS = (names.NAMESPACE, names.DEPLOYMENT)
REPLICAS = Gauge(names.DEPLOYMENT_REPLICAS, "Replicas of the InferenceDeployment that exist (any revision)", LABELS)
DESIRED = Gauge(
    names.DEPLOYMENT_DESIRED_REPLICAS,
    "Replicas the autoscaler decided (status.desiredReplicas; applied or advisory), else spec.replicas",
    LABELS,
)
TIER = Gauge(names.DEPLOYMENT_TIER_INFO, "The quantization tier rolled out (value 1)", (*LABELS, names.TIER))
DESIRED_TIER = Gauge(
    names.DEPLOYMENT_DESIRED_TIER_INFO,
    "The tier the autoscaler decided (status.desiredTier, value 1), else the tier rolled out",
    (*LABELS, names.TIER),
)
COST = Gauge(names.DEPLOYMENT_COST, "Observed $ per 1M tokens served (status.costPerMillionTokens)", LABELS)
# each deployment's own objectives, which the chart's generic rules and dashboards join on (namespace, deployment)
THRESHOLD = Gauge(names.DEPLOYMENT_SLO_THRESHOLD, "spec.slo threshold of one SLI (seconds)", (*LABELS, "sli"))
OBJECTIVE = Gauge(names.DEPLOYMENT_SLO_OBJECTIVE, "spec.slo.objectivePercent / 100", LABELS)
PERIOD = Gauge(names.DEPLOYMENT_SLO_BUDGET_PERIOD, "spec.slo.budgetPeriod (seconds)", LABELS)
COST_LIMIT = Gauge(names.DEPLOYMENT_COST_LIMIT, "spec.cost.maxPerMillionTokens ($)", LABELS)


def export(namespace: str, name: str, body: Mapping[str, Any]) -> None:
    spec = body.get("spec") or {}
    st = body.get("status") or {}
    REPLICAS.labels(namespace, name).set(st.get("replicas") or 0)
    desired = st.get("desiredReplicas")
    DESIRED.labels(namespace, name).set(desired if desired is not None else spec.get("replicas", 1))
    tier = st.get("tier")
    for gauge, value in ((TIER, tier), (DESIRED_TIER, st.get("desiredTier") or tier)):
        for other in TIERS:  # one info series, for the tier that runs (or is asked for) now
            if other != value:
                _remove(gauge, namespace, name, other)
        if value:
            gauge.labels(namespace, name, value).set(1)
    cost = st.get("costPerMillionTokens")
    if cost is None:
        _remove(COST, namespace, name)
    else:
        COST.labels(namespace, name).set(float(cost))
    export_objectives(namespace, name, spec)


def export_objectives(namespace: str, name: str, spec: Mapping[str, Any]) -> None:
    """The SLO thresholds, objective, budget period and cost limit the spec sets (series for unset ones removed)."""
    try:
        slo = api.SLO.model_validate(spec.get("slo") or {})
        cost = api.Cost.model_validate(spec.get("cost") or {})
    except ValueError:  # the CRD rejects such a spec; never crash the watch over one
        return
    for sli in names.SLIS:
        threshold = getattr(slo, f"{sli}_p99")
        if threshold is None:
            _remove(THRESHOLD, namespace, name, sli)
        else:
            THRESHOLD.labels(namespace, name, sli).set(durations.seconds(threshold))
    OBJECTIVE.labels(namespace, name).set(slo.objective_percent / 100)
    PERIOD.labels(namespace, name).set(slo.budget_period_seconds)
    if cost.max_per_million_tokens is None:
        _remove(COST_LIMIT, namespace, name)
    else:
        COST_LIMIT.labels(namespace, name).set(cost.max_per_million_tokens)


def forget(namespace: str, name: str) -> None:
    for gauge in (REPLICAS, DESIRED, COST, OBJECTIVE, PERIOD, COST_LIMIT):
        _remove(gauge, namespace, name)
    for sli in names.SLIS:
        _remove(THRESHOLD, namespace, name, sli)
    for tier in TIERS:
        _remove(TIER, namespace, name, tier)
        _remove(DESIRED_TIER, namespace, name, tier)


def _remove(gauge: Gauge, *labels: str) -> None:
    try:
        gauge.remove(*labels)
    except KeyError:  # never set
        pass


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL, id="deployment-gauges")
async def deployment_gauges(type: str | None, body: kopf.Body, name: str, namespace: str | None, **_: Any) -> None:
    if namespace is None:
        return
    if type == "DELETED" or body.get("metadata", {}).get("deletionTimestamp"):
        forget(namespace, name)
    else:
        export(namespace, name, body)
