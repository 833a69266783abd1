"""Read one InferenceDeployment's observation from Prometheus (a thin adapter over `prometheus-api-client`).

Series are selected by two target labels, which the scrape config (`infleet.monitoring.scrape`, used by the chart
and the local fleet) attaches to every runtime pod's series through Kubernetes service discovery relabelling:
`namespace` (the pod's namespace) and `deployment` (the pod label `infleet.dev/deployment`). Their names live in
`infleet.api.metrics`, with the rules' and dashboards'.

Both the runtime's `infleet_*` names and vLLM's `vllm:*` names are read (`A or B`), so deployments with
`engine: vllm` scale the same way. vLLM's names are also read as `vllm_*`: prometheus_client's OpenMetrics output
(which Prometheus 2 asks for) escapes the colon to an underscore, so that is what gets stored.

Prometheus being unreachable, or answering with an error, gives an `Observation` whose `missing` says why; the
policy then holds instead of scaling down. Nothing here raises to the caller.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

from prometheus_api_client import PrometheusConnect

from infleet.api.metrics import DEPLOYMENT as DEPLOYMENT_LABEL
from infleet.api.metrics import NAMESPACE as NAMESPACE_LABEL
from infleet.autoscaler.policy import Observation


def _names(infleet: str, *vllm: str) -> tuple[str, ...]:
    """infleet's name first, then each vLLM name as exposed (`vllm:x`) and as escaped by OpenMetrics (`vllm_x`)."""
    return (infleet, *(n for name in vllm for n in (f"vllm:{name}", f"vllm_{name}")))


TTFT = _names("infleet_time_to_first_token_seconds", "time_to_first_token_seconds")
TPOT = _names("infleet_inter_token_latency_seconds", "inter_token_latency_seconds", "time_per_output_token_seconds")
E2E = _names("infleet_e2e_request_latency_seconds", "e2e_request_latency_seconds")
WAITING = _names("infleet_num_requests_waiting", "num_requests_waiting")
RUNNING = _names("infleet_num_requests_running", "num_requests_running")
PROMPT_TOKENS = _names("infleet_prompt_tokens_total", "prompt_tokens_total")
GENERATION_TOKENS = _names("infleet_generation_tokens_total", "generation_tokens_total")
FINISHED = _names("infleet_request_success_total", "request_success_total")


def selector(namespace: str, deployment: str) -> str:
    return f'{NAMESPACE_LABEL}="{_escape(namespace)}",{DEPLOYMENT_LABEL}="{_escape(deployment)}"'


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _either(template: str, names: tuple[str, ...]) -> str:
    """The same expression over each name, joined by `or`: the first name that has series wins."""
    return " or ".join(f"({template.format(name=name)})" for name in names)


def quantile_query(names: tuple[str, ...], sel: str, window: str, q: float = 0.99) -> str:
    return _either(f"histogram_quantile({q}, sum by (le) (rate({{name}}_bucket{{{{{sel}}}}}[{window}])))", names)


def gauge_query(names: tuple[str, ...], sel: str) -> str:
    return _either(f"sum({{name}}{{{{{sel}}}}})", names)


def rate_query(names: tuple[str, ...], sel: str, window: str) -> str:
    return _either(f"sum(rate({{name}}{{{{{sel}}}}}[{window}]))", names)


@dataclass(frozen=True)
class Queries:
    """Every PromQL expression the adapter runs for one deployment (also handy for dashboards and docs)."""

    ttft_p99: str
    tpot_p99: str
    e2e_p99: str
    queue_depth: str
    running: str
    tokens_per_second: str
    requests_per_second: str

    @classmethod
    def for_deployment(cls, namespace: str, deployment: str, window: str = "1m") -> Queries:
        sel = selector(namespace, deployment)
        tokens = f"({rate_query(PROMPT_TOKENS, sel, window)}) + ({rate_query(GENERATION_TOKENS, sel, window)})"
        return cls(
            ttft_p99=quantile_query(TTFT, sel, window),
            tpot_p99=quantile_query(TPOT, sel, window),
            e2e_p99=quantile_query(E2E, sel, window),
            queue_depth=gauge_query(WAITING, sel),
            running=gauge_query(RUNNING, sel),
            tokens_per_second=tokens,
            requests_per_second=rate_query(FINISHED, sel, window),
        )


class PrometheusReader:
    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url
        self.client = PrometheusConnect(url=url, disable_ssl=True, timeout=timeout)

    def scalar(self, query: str) -> float | None:
        """One number, or None when the query has no series or the value is NaN (no traffic in the window)."""
        result = self.client.custom_query(query)
        if not result:
            return None
        value = float(result[0]["value"][1])
        return None if math.isnan(value) or math.isinf(value) else value

    def observe(
        self,
        namespace: str,
        deployment: str,
        replicas: int,
        ready_replicas: int | None = None,
        window: str = "1m",
        held_requests: int = 0,
    ) -> Observation:
        """The deployment's observation now; `missing` set (never an exception) when Prometheus fails."""
        q = Queries.for_deployment(namespace, deployment, window)
        now = time.time()
        try:
            values = {field: self.scalar(getattr(q, field)) for field in q.__dataclass_fields__}
        except Exception as err:  # connection refused, timeout, HTTP 4xx/5xx, bad JSON: all the same to a caller
            return Observation(
                sampled_at=now,
                replicas=replicas,
                ready_replicas=ready_replicas,
                held_requests=held_requests,
                missing=f"Prometheus at {self.url} failed: {type(err).__name__}: {err}",
            )
        tokens = values["tokens_per_second"]
        finished = values["requests_per_second"]
        per_request = tokens / finished if tokens is not None and finished else None
        missing = None
        if values["queue_depth"] is None and values["running"] is None and tokens is None:
            missing = f"no infleet_* or vllm:* series for {namespace}/{deployment} in Prometheus at {self.url}"
        return Observation(
            sampled_at=now,
            replicas=replicas,
            ready_replicas=ready_replicas,
            queue_depth=values["queue_depth"],
            running=values["running"],
            tokens_per_second=tokens,
            tokens_per_request=per_request,
            ttft_p99=values["ttft_p99"],
            tpot_p99=values["tpot_p99"],
            e2e_p99=values["e2e_p99"],
            held_requests=held_requests,
            missing=missing,
        )

    async def observe_async(
        self,
        namespace: str,
        deployment: str,
        replicas: int,
        ready_replicas: int | None = None,
        window: str = "1m",
        held_requests: int = 0,
    ) -> Observation:
        """`observe` off the event loop (the client is blocking HTTP), for the operator's async timers."""
        return await asyncio.to_thread(
            self.observe, namespace, deployment, replicas, ready_replicas, window, held_requests
        )
