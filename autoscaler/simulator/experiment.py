"""One comparison: a trace, a latency model, and every policy run against the same fleet.

infleet's policy estimates a replica's capacity at the SLO from the token mix it observes (causal: it never sees the
trace). `describe` is hindsight over the whole trace: the report's capacity figure, the static-peak size and KPA's
concurrency target come from it, until the protocol's tuning on the tuning part replaces them
(docs/autoscaler-evaluation.md).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from infleet.autoscaler.cost import cost_of_gpu_hours, gpu_hourly_price
from infleet.autoscaler.latency_model import LatencyModel
from infleet.autoscaler.policy import ScalingSpec
from infleet.autoscaler.simulator.baselines import HPA, KEDA, KPA, HPABehavior, Static
from infleet.autoscaler.simulator.fleet import Policy, SimConfig, SimResult, simulate
from infleet.autoscaler.simulator.infleet_policy import CausalCapacity, InfleetPolicy
from infleet.autoscaler.simulator.trace import TraceRequest

POLICIES = ("infleet", "hpa-gpu-util", "keda-queue", "knative-kpa", "static-peak", "static-oracle")


@dataclass(frozen=True)
class Workload:
    """What the policies are told about the replicas and the trace."""

    capacity: float  # tokens/s per replica at the SLO
    concurrency: float  # in-flight requests per replica at that capacity (Little's law)
    peak_tokens_per_second: float  # highest 60 s average of the trace
    mean_prompt: float
    mean_output: float


def describe(trace: Sequence[TraceRequest], model: LatencyModel, config: SimConfig) -> Workload:
    prompt = float(np.mean([r.prompt_tokens for r in trace]))
    output = float(np.mean([r.output_tokens for r in trace]))
    capacity = model.capacity(prompt, output, config.tpot_slo, config.ttft_slo, config.max_batch_tokens)
    if capacity <= 0:
        raise ValueError(
            f"one replica cannot meet the SLO (TPOT {config.tpot_slo:g}s, TTFT {config.ttft_slo:g}s) even alone: "
            f"a decode step takes {model.step_time(0, 1, int(prompt)):.3g}s; loosen the SLO or pick a faster device"
        )
    # Little's law at capacity: requests/s x time in system (prefill chunks plus one decode step per output token)
    step = model.decode_step_time(8, int(8 * (prompt + output / 2)))
    in_system = math.ceil(prompt / config.max_batch_tokens) * step + output * step
    concurrency = capacity / (prompt + output) * in_system
    arrivals = np.array([r.arrival for r in trace])
    tokens = np.array([r.prompt_tokens + r.output_tokens for r in trace], dtype=float)
    per_minute = np.bincount((arrivals // 60).astype(int), weights=tokens) / 60
    return Workload(capacity, max(concurrency, 1.0), float(per_minute.max()), prompt, output)


def infleet_spec(config: SimConfig, max_replicas: int = 64, model: LatencyModel | None = None) -> ScalingSpec:
    """The spec an operator would build: the SLO from the deployment, everything else the defaults. The capacity is
    left out: the policy estimates it from the observed token mix (`causal_capacity`). With the tier's latency
    `model`, the spec knows the longest prompt that can meet the TTFT SLO (for the SLOAttainable condition)."""
    longest = model.longest_prompt_within(config.ttft_slo, config.max_batch_tokens) if model is not None else None
    return ScalingSpec(
        min_replicas=1,
        max_replicas=max_replicas,
        ttft_slo=config.ttft_slo,
        tpot_slo=config.tpot_slo,
        objective=config.objective,
        max_prompt_within_ttft=longest,
    )


def causal_capacity(model: LatencyModel, config: SimConfig) -> CausalCapacity:
    """The tier's latency profile at the deployment's SLO, asked about the mix the fleet reports (at the TPOT SLO
    alone when the mix's mean prompt cannot meet the TTFT SLO at any load)."""

    def at(prompt: float, output: float) -> float:
        within = model.capacity(prompt, output, config.tpot_slo, config.ttft_slo, config.max_batch_tokens)
        # a mix whose mean prompt cannot prefill within the TTFT SLO at all still has a throughput limit
        return within or model.capacity(prompt, output, config.tpot_slo, None, config.max_batch_tokens)

    return CausalCapacity(at)


def make_policy(
    name: str, workload: Workload, config: SimConfig, model: LatencyModel, static_replicas: int | None = None
) -> Policy:
    if name == "infleet":
        return InfleetPolicy(infleet_spec(config, model=model), causal_capacity(model, config))
    if name == "hpa-gpu-util":
        return HPA(behavior=HPABehavior())
    if name == "keda-queue":
        return KEDA(behavior=HPABehavior())
    if name == "knative-kpa":
        return KPA(target_concurrency=workload.concurrency)
    if name == "static-peak":  # the 60 s peak at the same 70% target utilization as the HPA
        return Static(math.ceil(workload.peak_tokens_per_second / (workload.capacity * 0.7)))
    if name == "static-oracle":
        if static_replicas is None:
            raise ValueError("static-oracle needs its replica count (see oracle_static)")
        return Static(static_replicas, name="static-oracle")
    raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}")


def oracle_static(
    run: Callable[[Policy], SimResult], config: SimConfig, target: float = 0.99, limit: int = 128
) -> tuple[int, SimResult]:
    """The smallest fixed fleet reaching `target` attainment: hindsight no real autoscaler has."""
    lo, hi = 1, 1
    best = run(Static(hi, name="static-oracle"))
    while best.slo_attainment(config.ttft_slo, config.tpot_slo) < target and hi < limit:
        lo, hi = hi + 1, min(hi * 2, limit)
        best = run(Static(hi, name="static-oracle"))
    while lo < hi:  # invariant: hi meets the target (or is the limit)
        mid = (lo + hi) // 2
        result = run(Static(mid, name="static-oracle"))
        if result.slo_attainment(config.ttft_slo, config.tpot_slo) >= target:
            hi, best = mid, result
        else:
            lo = mid + 1
    return hi, best


def summarize(result: SimResult, config: SimConfig, gpu_price: float) -> dict[str, float | int]:
    gpu_hours = result.gpu_seconds / 3600
    return {
        "slo_attainment": round(result.slo_attainment(config.ttft_slo, config.tpot_slo), 5),
        "gpu_hours": round(gpu_hours, 4),
        "cost_per_million_tokens": round(cost_of_gpu_hours(gpu_hours, gpu_price, result.served_tokens), 5),
        "scale_events": result.scale_events,
        "requests": len(result.measured),
        "failed": result.failed,
        "max_replicas": max(result.timeline.replicas, default=0),
    }


def over_seeds(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One policy's `summarize` rows over cold-start seeds: means, the worst seed's attainment, the highest peak."""

    def mean(key: str) -> float:
        return statistics.fmean(float(r[key]) for r in rows)

    return {
        "slo_attainment": round(mean("slo_attainment"), 5),
        "slo_attainment_min": min(float(r["slo_attainment"]) for r in rows),
        "gpu_hours": round(mean("gpu_hours"), 3),
        "cost_per_million_tokens": round(mean("cost_per_million_tokens"), 4),
        "scale_events": round(mean("scale_events"), 1),
        "failed": round(mean("failed"), 1),
        "max_replicas": max(int(r["max_replicas"]) for r in rows),
    }


def compare(
    trace: Sequence[TraceRequest],
    model: LatencyModel,
    config: SimConfig,
    names: Sequence[str] = POLICIES,
    prices: dict[str, float] | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, dict[str, float | int]], dict[str, SimResult], Workload]:
    """Every named policy over the same trace; `progress` hears one line per simulated run (a long trace takes a
    while per policy, and the static oracle replays it several times)."""
    workload = describe(trace, model, config)
    price = gpu_hourly_price(model.device.name, prices)
    runs = 0

    def run(policy: Policy) -> SimResult:
        nonlocal runs
        started = time.monotonic()
        result = simulate(trace, model, policy, config)
        runs += 1
        if progress:
            attained = result.slo_attainment(config.ttft_slo, config.tpot_slo)
            label = f"{policy.name} x{policy.replicas}" if isinstance(policy, Static) else policy.name
            took = time.monotonic() - started
            progress(f"run {runs}: {label} replayed {len(trace):,} requests in {took:.1f}s, attainment {attained:.1%}")
        return result

    results: dict[str, SimResult] = {}
    for name in names:
        if name == "static-oracle":
            _, results[name] = oracle_static(run, config)
        else:
            results[name] = run(make_policy(name, workload, config, model))
    summary = {name: summarize(r, config, price) for name, r in results.items()}
    return summary, results, workload
