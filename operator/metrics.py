"""The operator's own Prometheus metrics (served by `infleet operator run --metrics-port`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "infleet_operator_reconcile_total",
    "Reconciles of InferenceDeployments, by trigger and result",
    ["trigger", "result"],
)
RECONCILE_SECONDS = Histogram(
    "infleet_operator_reconcile_duration_seconds",
    "Time to reconcile one InferenceDeployment",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RECONCILE_ERRORS = Counter(
    "infleet_operator_reconcile_errors_total", "Failed reconciles, by reason (temporary ones are retried)", ["reason"]
)
API_REQUESTS = Counter(
    "infleet_operator_api_requests_total", "Requests the operator sent to the Kubernetes API", ["verb", "kind"]
)
DRIFT_REPAIRS = Counter(
    "infleet_operator_drift_repairs_total", "Owned objects restored after someone changed or deleted them", ["kind"]
)
DEGRADED = Gauge("infleet_operator_degraded_deployments", "InferenceDeployments whose Degraded condition is True")
