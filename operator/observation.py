"""The operator's observation loop: every InferenceDeployment, scaled or not, gets its observed figures, cost and
SLOMet condition in status. Scaling only consumes the same observations (`autoscaling.prometheus_observer`).

One PromQL query per interval serves the whole fleet: each quantity is summed `by (namespace, deployment)`, tagged
with a `quantity` label (`label_replace`) and the lot joined with `or`. The answer is cached for the interval, so
the autoscaler's ticks for scaled deployments read the same sample instead of querying again.

SLOMet is judged on exact counts when the gateway reports them (`infleet_gateway_slo_requests_total`: each request
against its own deployment's thresholds): the share of good requests over the window against `objectivePercent`.
Without those counts (traffic that bypasses the gateway) it falls back to the p99s read off the histograms.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
from prometheus_api_client import PrometheusConnect

from infleet.api import durations
from infleet.api import metrics as names
from infleet.autoscaler import policy
from infleet.autoscaler import prometheus as reader_queries
from infleet.operator import api, checks, status, status_writer
from infleet.operator.kube import KubeError
from infleet.operator.state import OperatorState

INTERVAL = 15.0
WINDOW = "1m"
BY = f"{names.NAMESPACE}, {names.DEPLOYMENT}"
LABEL = "quantity"
SLI_LABELS = {"ttft": "TTFT", "tpot": "TPOT", "e2e": "end-to-end"}
SLO_FIELDS = {"ttft": "ttft_p99", "tpot": "tpot_p99", "e2e": "e2e_p99"}
log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, deployment)


def _either(template: str, names_: tuple[str, ...]) -> str:
    return " or ".join(f"({template.format(name=n)})" for n in names_)


def quantities(window: str = WINDOW) -> dict[str, str]:
    """Each quantity per (namespace, deployment), for either engine; the keys become the `quantity` label."""
    rate = f"sum by ({BY}) (rate({{name}}[{window}]))"
    out = {
        f"{sli}_p99": _either(f"histogram_quantile(0.99, sum by ({BY}, le) (rate({{name}}_bucket[{window}])))", hist)
        for sli, hist in (("ttft", reader_queries.TTFT), ("tpot", reader_queries.TPOT), ("e2e", reader_queries.E2E))
    }
    out["queue_depth"] = _either(f"sum by ({BY}) ({{name}})", reader_queries.WAITING)
    out["running"] = _either(f"sum by ({BY}) ({{name}})", reader_queries.RUNNING)
    out["prompt_tokens_per_second"] = _either(rate, reader_queries.PROMPT_TOKENS)
    out["generation_tokens_per_second"] = _either(rate, reader_queries.GENERATION_TOKENS)
    out["requests_per_second"] = _either(rate, reader_queries.FINISHED)
    for sli in names.SLIS:
        for result in ("good", "bad"):
            sel = f'{names.SLO_REQUESTS}{{sli="{sli}",result="{result}"}}'
            out[f"{sli}_{result}"] = f"sum by ({BY}) (increase({sel}[{window}]))"
    # the autoscaler's own windows (autoscaler/policy.py): demand as it arrives, and attainment over minutes
    out["arrivals_per_second"] = f"sum by ({BY}) (rate({names.RECEIVED_REQUESTS}[{policy.ARRIVAL_WINDOW:g}s]))"
    judged = f'{names.SLO_REQUESTS}{{sli="ttft"}}[{policy.ATTAINMENT_WINDOW:g}s]'
    good = f'{names.SLO_REQUESTS}{{sli="ttft",result="good"}}[{policy.ATTAINMENT_WINDOW:g}s]'
    out["ttft_attainment"] = f"sum by ({BY}) (increase({good})) / sum by ({BY}) (increase({judged}))"
    return out


def fleet_query(window: str = WINDOW) -> str:
    """The one query: every quantity of every deployment, told apart by the `quantity` label."""
    parts = [f'label_replace({expr}, "{LABEL}", "{name}", "", "")' for name, expr in quantities(window).items()]
    return "\nor\n".join(parts)


def parse(result: list[dict[str, Any]]) -> dict[Key, dict[str, float]]:
    """Prometheus' vector answer -> {(namespace, deployment): {quantity: value}}; NaN/Inf (no traffic) left out."""
    out: dict[Key, dict[str, float]] = {}
    for sample in result:
        metric = sample["metric"]
        value = float(sample["value"][1])
        if not math.isfinite(value) or names.DEPLOYMENT not in metric or names.NAMESPACE not in metric:
            continue
        key = (metric[names.NAMESPACE], metric[names.DEPLOYMENT])
        out.setdefault(key, {})[metric[LABEL]] = value
    return out


@dataclass
class Snapshot:
    sampled_at: float
    values: dict[Key, dict[str, float]] = field(default_factory=dict)
    error: str | None = None


class FleetReader:
    """One query per interval for the whole fleet; concurrent callers within the interval share the answer."""

    def __init__(self, url: str, interval: float = INTERVAL, window: str = WINDOW, timeout: float = 10.0) -> None:
        self.url, self.interval, self.window = url, interval, window
        self.client = PrometheusConnect(url=url, disable_ssl=True, timeout=timeout)
        self.queries = 0  # how many queries were sent (the one-per-interval promise is testable)
        self._last: Snapshot | None = None
        self._lock = asyncio.Lock()

    @property
    def last(self) -> Snapshot | None:
        """The latest answer, without querying (None before the first)."""
        return self._last

    def query(self) -> Snapshot:
        now = time.time()
        self.queries += 1
        try:
            return Snapshot(now, parse(self.client.custom_query(fleet_query(self.window))))
        except Exception as err:  # refused, timeout, HTTP error: the same to every caller
            return Snapshot(now, error=f"Prometheus at {self.url} failed: {type(err).__name__}: {err}")

    async def snapshot(self) -> Snapshot:
        async with self._lock:
            if self._last is None or time.time() - self._last.sampled_at >= self.interval * 0.9:
                self._last = await asyncio.to_thread(self.query)
            return self._last

    async def observe(
        self, namespace: str, name: str, replicas: int, ready: int | None = None, held: int = 0
    ) -> policy.Observation:
        return observation_from(await self.snapshot(), namespace, name, replicas, ready, held)


def observation_from(
    snap: Snapshot, namespace: str, name: str, replicas: int, ready: int | None = None, held: int = 0
) -> policy.Observation:
    """The policy's `Observation` for one deployment, out of the fleet's snapshot."""
    base = policy.Observation(sampled_at=snap.sampled_at, replicas=replicas, ready_replicas=ready, held_requests=held)
    if snap.error:
        return policy.Observation(**{**base.__dict__, "missing": snap.error})
    v = snap.values.get((namespace, name), {})
    prompt, generated = v.get("prompt_tokens_per_second"), v.get("generation_tokens_per_second")
    tokens = None if prompt is None and generated is None else (prompt or 0.0) + (generated or 0.0)
    finished = v.get("requests_per_second")
    missing = None
    if v.get("queue_depth") is None and v.get("running") is None and tokens is None:
        missing = f"no infleet_* or vllm:* series for {namespace}/{name} in Prometheus"
    return policy.Observation(
        sampled_at=snap.sampled_at,
        replicas=replicas,
        ready_replicas=ready,
        queue_depth=v.get("queue_depth"),
        running=v.get("running"),
        tokens_per_second=tokens,
        tokens_per_request=tokens / finished if tokens is not None and finished else None,
        ttft_p99=v.get("ttft_p99"),
        tpot_p99=v.get("tpot_p99"),
        e2e_p99=v.get("e2e_p99"),
        held_requests=held,
        missing=missing,
        ttft_attainment=v.get("ttft_attainment"),
        arrival_rate=v.get("arrivals_per_second"),
        prompt_tokens_per_request=prompt / finished if prompt is not None and finished else None,
        output_tokens_per_request=generated / finished if generated is not None and finished else None,
    )


def attainment_from(snap: Snapshot, namespace: str, name: str) -> dict[str, float]:
    """Share of good requests per SLI over the window, from the gateway's exact counts (SLIs without traffic left
    out)."""
    v = snap.values.get((namespace, name), {})
    out = {}
    for sli in names.SLIS:
        good, bad = v.get(f"{sli}_good", 0.0), v.get(f"{sli}_bad", 0.0)
        if good + bad > 0:
            out[sli] = good / (good + bad)
    return out


def slo_condition(
    spec: api.InferenceDeploymentSpec,
    obs: policy.Observation,
    attainment: Mapping[str, float],
    generation: int | None,
) -> dict[str, Any]:
    """SLOMet with a reason that names the SLI missed first (`TPOTMissed`): exact attainment against the objective
    where the gateway counted, else the observed p99 against the threshold."""
    targets = {sli: getattr(spec.slo, f) for sli, f in SLO_FIELDS.items() if getattr(spec.slo, f)}
    if not targets:
        return status.condition(status.SLO_MET, None, "NoTargets", "spec.slo sets no latency targets", generation)
    objective = spec.slo.objective_percent
    missed: list[tuple[str, str]] = []
    judged = 0
    for sli, threshold in targets.items():
        label = SLI_LABELS[sli]
        p99 = getattr(obs, f"{sli}_p99")
        ratio = attainment.get(sli)
        if ratio is not None:
            judged += 1
            if ratio * 100 < objective:
                seen = f", p99 {p99:.3g}s" if p99 is not None else ""
                missed.append((sli, f"{label}: {ratio * 100:.4g}% of requests within {threshold} (objective "
                               f"{objective:g}%){seen}"))  # fmt: skip
        elif p99 is not None:
            judged += 1
            if p99 > durations.seconds(threshold):
                missed.append((sli, f"{label} p99 {p99:.3g}s > {threshold}"))
    if missed:
        reason = f"{SLI_LABELS[missed[0][0]].replace('end-to-end', 'E2E')}Missed"
        return status.condition(status.SLO_MET, False, reason, "; ".join(m for _, m in missed), generation)
    if not judged:
        why = obs.missing or f"no requests in the last {WINDOW}"
        return status.condition(status.SLO_MET, None, "NoObservations", why, generation)
    return status.condition(
        status.SLO_MET, True, "TargetsMet", f"every SLI meets spec.slo over the last {WINDOW}", generation
    )


def observed_status(
    spec: api.InferenceDeploymentSpec,
    st: Mapping[str, Any],
    obs: policy.Observation,
    attainment: Mapping[str, float],
    generation: int | None,
) -> dict[str, Any]:
    """The status fields this loop owns: observed figures, attainment, $/1M tokens and SLOMet."""
    from infleet.operator import autoscaling  # the cost model's price table lives with the autoscaler's plug point

    figures = {
        "ttftP99Seconds": obs.ttft_p99,
        "tpotP99Seconds": obs.tpot_p99,
        "e2eP99Seconds": obs.e2e_p99,
        "queueDepth": obs.queue_depth,
        "tokensPerSecond": obs.tokens_per_second,
    }
    observed: dict[str, Any] = {k: autoscaling.readable(v) for k, v in figures.items() if v is not None}
    if attainment:
        observed["attainmentPercent"] = {k: autoscaling.readable(v * 100) for k, v in attainment.items()}
    observed["window"] = WINDOW
    prices = autoscaling.prices_for(spec, autoscaling.configured_prices())
    replicas = int(st.get("replicas") or spec.replicas)
    running = spec.on(checks.running_product(spec, st.get("accelerator")))  # priced as the product that bills
    return {
        "observed": observed,
        "costPerMillionTokens": autoscaling.observed_cost(running, replicas, obs.tokens_per_second, prices),
        "conditions": [slo_condition(spec, obs, attainment, generation)],
    }


# ---- the loop -----------------------------------------------------------------------------------------------------


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL, id="observation-registry")
async def track(
    type: str | None, body: kopf.Body, name: str, namespace: str | None, memo: OperatorState, **_: Any
) -> None:
    if namespace is None:
        return
    if type == "DELETED" or body.get("metadata", {}).get("deletionTimestamp"):
        memo.forget((namespace, name))
        status_writer.forget(memo, (namespace, name))
    else:
        memo.known[(namespace, name)] = {"metadata": dict(body["metadata"]), "spec": dict(body["spec"]),
                                     "status": dict(body.get("status") or {})}  # fmt: skip


NO_READER = "the operator has no --prometheus-url"


def current_snapshot(memo: OperatorState) -> Snapshot | None:
    """The sample the loop judges by now (None before its first query): a new deployment's first status carries
    what the loop would write, so the loop has nothing to add."""
    if memo.reader is None:
        return Snapshot(time.time(), error=NO_READER)
    return memo.reader.last


def part_for(
    spec: api.InferenceDeploymentSpec, st: Mapping[str, Any], snap: Snapshot, meta: Mapping[str, Any]
) -> dict[str, Any]:
    """The observation part of one deployment's status (status_writer.PARTS) from one snapshot."""
    namespace, name = meta["namespace"], meta["name"]
    obs = observation_from(snap, namespace, name, spec.replicas, st.get("readyReplicas"))
    return observed_status(spec, st, obs, attainment_from(snap, namespace, name), meta.get("generation"))


async def observe_fleet(memo: OperatorState, snap: Snapshot) -> int:
    """Every known deployment's observation part from one snapshot; returns how many status writes that took
    (none for a deployment whose figures and SLOMet are what status shows)."""
    written = 0
    for (namespace, name), body in list(memo.known.items()):
        try:
            spec = api.InferenceDeploymentSpec.model_validate(body["spec"])
        except ValueError:  # an invalid spec has its own Degraded condition from the reconcile
            continue
        part = part_for(spec, body["status"], snap, body["metadata"])
        try:
            written += await status_writer.submit_or_retry(memo, body, {"observed": part}, now=True)
        except KubeError as err:
            log.warning(f"observation: could not write {namespace}/{name}'s status: {err}")
    return written


async def tick(memo: OperatorState) -> None:
    """One snapshot for the whole fleet, every deployment's status from it (`OperatorState.start_loop`)."""
    reader = memo.reader
    snap = await reader.snapshot() if reader else Snapshot(time.time(), error=NO_READER)
    await observe_fleet(memo, snap)
