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

# Where a reconcile's time goes (benchmarks/operator_scale.py reports each phase per deployment)
PHASE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
DISPATCH_SECONDS = Histogram(
    "infleet_operator_dispatch_seconds",
    "From an InferenceDeployment's creation to its first reconcile starting: kopf's watch, queue and own patching",
    buckets=PHASE_BUCKETS,
)
RECONCILE_QUEUE_SECONDS = Histogram(
    "infleet_operator_reconcile_queue_seconds",
    "Time a reconcile waited for its owner's lock and a reconcile slot",
    buckets=PHASE_BUCKETS,
)
API_CLIENT_QUEUE_SECONDS = Histogram(
    "infleet_operator_api_client_queue_seconds",
    "Time an API request waited for one of the client's connections",
    buckets=PHASE_BUCKETS,
)
API_REQUEST_SECONDS = Histogram(
    "infleet_operator_api_request_seconds",
    "API request latency once sent (the API server's time plus the network), by verb",
    ["verb"],
    buckets=PHASE_BUCKETS,
)
APPLIES_SKIPPED = Counter(
    "infleet_operator_applies_skipped_total",
    "Reconciles that applied nothing: the live workloads carry the hash of exactly these rendered objects",
)
STATUS_WRITES_SKIPPED = Counter(
    "infleet_operator_status_writes_skipped_total", "Status writes left out because the status would not change"
)
STATUS_WRITES = Counter(
    "infleet_operator_status_writes_total",
    "Status writes to InferenceDeployments, by field manager (the operator's status writer, the autoscaler)",
    ["manager"],
)
