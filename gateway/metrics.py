"""The gateway's Prometheus metrics, per InferenceDeployment (`namespace`, `deployment` labels), in one registry per
gateway so that tests and several gateways in one process never share series.

Prefix-affinity hit rate in PromQL (the share of requests that went to their prefix's own replica):
  sum(rate(infleet_gateway_prefix_affinity_total{result="home"}[5m]))
    / sum(rate(infleet_gateway_prefix_affinity_total[5m]))
The autoscaler and operator read `infleet_gateway_held_requests` as demand for a deployment at zero replicas.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from infleet.api import metrics as names
from infleet.api.metrics import RESPONSE_CACHE_LOOKUPS, SLO_REQUESTS

CONTENT_TYPE = CONTENT_TYPE_LATEST
DEPLOYMENT = ("namespace", "deployment")
HELD_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)


class GatewayMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "infleet_gateway_requests", "Requests answered, by HTTP status code.", [*DEPLOYMENT, "code"], registry=r
        )
        self.errors = Counter(
            "infleet_gateway_errors",
            "Requests that failed in the gateway or upstream, by reason (no_replica, queue_full, hold_timeout, "
            "upstream_unreachable, stream_interrupted).",
            [*DEPLOYMENT, "reason"],
            registry=r,
        )
        self.retries = Counter(
            "infleet_gateway_retries", "Requests retried on another replica before their first byte.", DEPLOYMENT,
            registry=r,
        )  # fmt: skip
        self.retries_refused = Counter(
            "infleet_gateway_retries_refused",
            "Retries the deployment's retry budget refused (the replica's own answer, or a 502, went back).",
            DEPLOYMENT,
            registry=r,
        )
        self.adapter_loads = Counter(
            "infleet_gateway_adapter_loads",
            "Adapters the gateway asked a replica to load because no replica it tried held them, by result.",
            [*DEPLOYMENT, "adapter", "result"],
            registry=r,
        )
        self.held = Gauge(
            "infleet_gateway_held_requests",
            "Requests waiting for a ready replica (a deployment scaling from zero).",
            DEPLOYMENT,
            registry=r,
        )
        self.held_seconds = Histogram(
            "infleet_gateway_held_seconds",
            "Time requests waited for a ready replica.",
            DEPLOYMENT,
            buckets=HELD_BUCKETS,
            registry=r,
        )
        self.routing = Counter(
            "infleet_gateway_routing_decisions", "Replica choices, by strategy.", [*DEPLOYMENT, "strategy"], registry=r
        )
        self.affinity = Counter(
            "infleet_gateway_prefix_affinity",
            "Prefix-affinity choices: home (the prefix's own replica, a likely cache hit) or spill (load bound) on the "
            "character ring; hit (a replica holding the prompt's first blocks) or miss when KV-aware.",
            [*DEPLOYMENT, "result"],
            registry=r,
        )
        self.endpoints = Gauge("infleet_gateway_ready_endpoints", "Ready replicas known.", DEPLOYMENT, registry=r)
        self.received = Counter(
            names.RECEIVED_REQUESTS.removesuffix("_total"),
            "Requests received for a deployment, counted on arrival (held or not): the autoscaler's demand signal.",
            DEPLOYMENT,
            registry=r,
        )
        self.slo_requests = Counter(
            SLO_REQUESTS.removesuffix("_total"),
            "Requests judged against their deployment's own spec.slo thresholds, by SLI (ttft, tpot, e2e) and "
            "result (good, bad); see infleet.gateway.slo.",
            [*DEPLOYMENT, "sli", "result"],
            registry=r,
        )
        self.response_cache = Counter(
            RESPONSE_CACHE_LOOKUPS.removesuffix("_total"),
            "Deterministic requests looked up in the deployment's response cache, by result (hit, miss).",
            [*DEPLOYMENT, "result"],
            registry=r,
        )
        self.in_flight = Gauge("infleet_gateway_in_flight_requests", "Requests being proxied.", DEPLOYMENT, registry=r)
        cascade = ("namespace", names.CASCADE, names.MODEL)
        self.cascade_requests = Counter(
            names.CASCADE_REQUESTS.removesuffix("_total"),
            "Requests to a cascade, by the served name that answered.",
            cascade,
            registry=r,
        )
        self.cascade_escalations = Counter(
            names.CASCADE_ESCALATIONS.removesuffix("_total"),
            "Answers a cascade passed on to its next model, by the model escalated from and why.",
            [*cascade, "reason"],
            registry=r,
        )
        self.cascade_cost = Counter(
            names.CASCADE_COST.removesuffix("_total"),
            "Dollars spent on a cascade's requests (every model asked), by the served name that answered.",
            cascade,
            registry=r,
        )

        self._series: dict[tuple[str, str], DeploymentSeries] = {}

    def series(self, namespace: str, deployment: str) -> DeploymentSeries:
        """The deployment's own series, made once: `.labels(...)` takes a lock and builds a key per call, a cost
        every proxied request paid several times over."""
        found = self._series.get((namespace, deployment))
        if found is None:
            found = self._series[(namespace, deployment)] = DeploymentSeries(self, namespace, deployment)
        return found

    def declare_slo(self, namespace: str, deployment: str, slis: Iterable[str]) -> None:
        """Expose a deployment's good/bad series at 0 before its first request: PromQL's increase() never counts
        the first sample of a new series, so without this the first minute of traffic is missing from attainment."""
        for sli in slis:
            for result in ("good", "bad"):
                self.slo_requests.labels(namespace, deployment, sli, result)

    def render(self) -> bytes:
        return generate_latest(self.registry)


M = TypeVar("M", Counter, Gauge)


class DeploymentSeries:
    """One deployment's children of the per-deployment metrics, for the request path. Each child is made on first
    use, as `.labels(...)` made it before, so /metrics shows the same series (none at 0 that nothing counted)."""

    def __init__(self, metrics: GatewayMetrics, namespace: str, deployment: str) -> None:
        self.metrics = metrics
        self.namespace, self.deployment = namespace, deployment
        self.labels = {"namespace": namespace, "deployment": deployment}
        self._children: dict[tuple[object, tuple[str, ...]], Any] = {}

    def _child(self, metric: M, *values: str) -> M:
        child: M | None = self._children.get((metric, values))
        if child is None:
            child = self._children[(metric, values)] = metric.labels(self.namespace, self.deployment, *values)
        return child

    def requests(self, code: int) -> Counter:
        """The requests counter's child for an HTTP status code."""
        return self._child(self.metrics.requests, str(code))

    def received(self) -> Counter:
        return self._child(self.metrics.received)

    def errors(self, reason: str) -> Counter:
        return self._child(self.metrics.errors, reason)

    def retries(self) -> Counter:
        return self._child(self.metrics.retries)

    def retries_refused(self) -> Counter:
        return self._child(self.metrics.retries_refused)

    def routing(self, strategy: str) -> Counter:
        return self._child(self.metrics.routing, strategy)

    def affinity(self, result: str) -> Counter:
        return self._child(self.metrics.affinity, result)

    def endpoints(self) -> Gauge:
        return self._child(self.metrics.endpoints)

    def in_flight(self) -> Gauge:
        return self._child(self.metrics.in_flight)
