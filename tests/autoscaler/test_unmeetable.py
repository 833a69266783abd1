"""An SLO replicas cannot buy: the policy notices, stops adding replicas for the p99, and says why in a condition."""

from __future__ import annotations

from dataclasses import replace

import pytest

from infleet.autoscaler.latency_model import MODELS, LatencyModel, device
from infleet.autoscaler.policy import Observation, Recommendation, ScalingSpec, decide, share_above
from infleet.autoscaler.simulator.experiment import causal_capacity, infleet_spec
from infleet.autoscaler.simulator.fleet import SimConfig, simulate
from infleet.autoscaler.simulator.infleet_policy import InfleetPolicy
from infleet.autoscaler.simulator.workloads import long_context

SPEC = ScalingSpec(max_replicas=64, ttft_slo=2.0, tpot_slo=0.1, max_prompt_within_ttft=14_000)
HALF_TOO_LONG = ((1000.0, 0.0), (14_000.0, 50.0), (20_000.0, 100.0))  # cumulative: half the prompts above 14,000


def busy(**changes: object) -> Observation:
    """Four replicas, nothing waiting, the load fits, and the TTFT p99 far above the SLO."""
    base = Observation(
        sampled_at=1000.0,
        replicas=4,
        ready_replicas=4,
        queue_depth=0,
        running=2,
        tokens_per_second=100.0,
        ttft_p99=4.0,
        tpot_p99=0.02,
        ttft_attainment=0.5,
        prompt_histogram=HALF_TOO_LONG,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_share_above_reads_a_cumulative_histogram() -> None:
    assert share_above(HALF_TOO_LONG, 14_000) == pytest.approx(0.5)
    assert share_above(HALF_TOO_LONG, 17_000) == pytest.approx(0.25)  # linear within the bucket
    assert share_above(HALF_TOO_LONG, 50_000) == 0.0
    assert share_above((), 10) is None


def test_prompts_too_long_to_prefill_stop_the_p99_guard_and_say_so() -> None:
    decision = decide(SPEC, busy(), (), 1000.0)
    assert decision.replicas <= 4
    condition = next(c for c in decision.conditions if c.type == "SLOAttainable")
    assert (condition.status, condition.reason) == ("False", "SLOUnmeetable")
    assert "about 50% of recent requests have prompts over 14,000 tokens" in condition.message
    assert "Achievable attainment about 50.0%" in condition.message
    assert "tensor parallelism" in condition.message
    blind = decide(replace(SPEC, saturation=False), busy(), (), 1000.0)
    assert blind.replicas > 4  # the lever off: the guard buys replicas that cannot help
    assert next(c for c in blind.conditions if c.type == "SLOAttainable").is_true


def test_attainment_that_did_not_rise_when_the_fleet_doubled_stops_the_guard() -> None:
    spec = replace(SPEC, max_prompt_within_ttft=None)  # no profile: only the record can tell
    history = tuple(Recommendation(at, 4, ready=2, current=2, attainment=0.6) for at in (700.0, 710.0, 720.0))
    stuck = decide(spec, busy(ttft_attainment=0.6, prompt_histogram=()), history, 1000.0)
    assert stuck.replicas <= 4
    condition = next(c for c in stuck.conditions if c.type == "SLOAttainable")
    assert condition.reason == "SLOUnmeetable" and "no higher than the 60.0% of 2 to 2" in condition.message
    assert "no prompt-length profile" in condition.message
    helped = decide(spec, busy(ttft_attainment=0.8, prompt_histogram=()), history, 1000.0)
    assert helped.replicas > 4  # growth raised attainment: keep buying
    waiting = decide(spec, busy(ttft_attainment=0.6, prompt_histogram=(), queue_depth=40), history, 1000.0)
    assert waiting.replicas > 4  # a backlog is a lack of replicas, whatever the record says


def test_on_long_prompts_the_policy_buys_far_fewer_replicas_for_the_same_attainment() -> None:
    """Ten minutes of the long-context workload (half its prompts cannot prefill within 2 s on an L4 in fp8)."""
    model = LatencyModel(device("L4"), MODELS["llama-3.1-8b"], "fp8")
    trace = [r for r in long_context(0) if r.arrival < 600]
    config = SimConfig()
    runs = {}
    for on in (True, False):
        spec = replace(infleet_spec(config, model=model), saturation=on)
        policy = InfleetPolicy(spec, causal_capacity(model, config))
        result = simulate(trace, model, policy, config)
        runs[on] = (result.slo_attainment(config.ttft_slo, config.tpot_slo), result.gpu_seconds, policy)
    (with_lever, gpu_on, policy), (without, gpu_off, _) = runs[True], runs[False]
    assert with_lever >= without - 0.01
    assert gpu_on < 0.5 * gpu_off
    assert policy.last is not None
    condition = next(c for c in policy.last.conditions if c.type == "SLOAttainable")
    assert (
        condition.reason == "SLOUnmeetable" and "prefill alone takes longer than the 2s TTFT SLO" in condition.message
    )


def test_the_forecast_leads_a_rising_load_by_the_cold_start() -> None:
    from infleet.autoscaler.policy import forecast

    rising = tuple(Recommendation(float(t), 1, tokens=100.0 * t) for t in range(0, 100, 10))
    ahead = forecast(rising, 100.0, 10_000.0, 30.0)
    assert ahead is not None and ahead > 10_000.0  # a rising trend is extrapolated over the lead
    flat = tuple(Recommendation(float(t), 1, tokens=5000.0) for t in range(0, 100, 10))
    assert forecast(flat, 100.0, 5000.0, 30.0) == pytest.approx(5000.0)
    assert forecast((), 100.0, 5000.0, 30.0) is None  # too little history: no forecast
    spec = replace(SPEC, capacity_tokens_per_second=1000.0, target_utilization=1.0, max_prompt_within_ttft=None)
    now = Observation(sampled_at=100.0, replicas=10, ready_replicas=10, tokens_per_second=10_000.0, queue_depth=0)
    plain = decide(spec, now, rising, 100.0)
    led = decide(replace(spec, forecast_lead=30.0), now, rising, 100.0)
    assert led.replicas > plain.replicas and "forecast 30s ahead" in led.reason


def test_the_queue_target_comes_from_the_ttft_slo_by_littles_law() -> None:
    from infleet.autoscaler.policy import queue_target

    spec = replace(SPEC, capacity_tokens_per_second=2000.0, target_utilization=0.5, queue_from_slo=True)
    obs = Observation(sampled_at=0.0, replicas=1, tokens_per_request=500.0)
    assert queue_target(spec, obs) == pytest.approx(2.0 * 1000.0 / 500.0)  # 2 requests/s for 2 s
    assert queue_target(replace(spec, queue_from_slo=False), obs) == spec.target_queue_per_replica
    assert queue_target(spec, replace(obs, tokens_per_request=None)) == spec.target_queue_per_replica
