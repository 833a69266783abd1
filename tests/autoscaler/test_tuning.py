"""Equal tuning: a seed fixes the search, every policy's choice is feasible when a trial is, and a chosen trial
rebuilds to the very policy that was simulated."""

from __future__ import annotations

from itertools import pairwise

import pytest

from infleet.autoscaler.latency_model import MODELS, LatencyModel, device
from infleet.autoscaler.simulator.baselines import Static
from infleet.autoscaler.simulator.fleet import SimConfig, simulate
from infleet.autoscaler.simulator.trace import TraceRequest, split
from infleet.autoscaler.simulator.tuning import TARGET, TUNED, build, context_for, tune

L4_8B = LatencyModel(device("L4"), MODELS["llama-3.1-8b"], "fp8")
CONFIG = SimConfig(warmup=120.0)


def small_trace() -> list[TraceRequest]:
    """Ten minutes: 2 requests/s, then 4/s from 400 s on (after the tuning part's cut at 360 s)."""
    return [TraceRequest(i / 2, 600, 80) for i in range(800)] + [TraceRequest(400 + i / 4, 600, 80) for i in range(800)]


@pytest.fixture(scope="module")
def tuning_part() -> list[TraceRequest]:
    return split(small_trace()).tuning


def test_tuning_is_reproducible_for_a_seed(tuning_part: list[TraceRequest]) -> None:
    ctx = context_for(tuning_part, L4_8B, CONFIG)
    first = tune("hpa-gpu-util", tuning_part, ctx, trials=4, seed=7)
    again = tune("hpa-gpu-util", tuning_part, ctx, trials=4, seed=7)
    other = tune("hpa-gpu-util", tuning_part, ctx, trials=4, seed=8)
    assert [(t.params, t.attainment, t.gpu_hours) for t in first.trials] == [
        (t.params, t.attainment, t.gpu_hours) for t in again.trials
    ]
    assert first.chosen == again.chosen
    assert [t.params for t in first.trials] != [t.params for t in other.trials]


@pytest.mark.parametrize("name", TUNED)
def test_the_choice_rebuilds_the_simulated_policy(name: str, tuning_part: list[TraceRequest]) -> None:
    ctx = context_for(tuning_part, L4_8B, CONFIG)
    tuned = tune(name, tuning_part, ctx, trials=3, seed=0)
    assert len(tuned.trials) == 3
    if tuned.feasible:
        assert tuned.chosen.attainment >= TARGET
        assert tuned.chosen.gpu_hours == min(t.gpu_hours for t in tuned.trials if t.feasible)
    else:
        assert tuned.chosen.attainment == max(t.attainment for t in tuned.trials) and tuned.notes
    result = simulate(tuning_part, L4_8B, build(name, tuned.chosen.params, ctx), CONFIG)
    assert result.slo_attainment(CONFIG.ttft_slo, CONFIG.tpot_slo) == tuned.chosen.attainment
    assert result.gpu_seconds / 3600 == tuned.chosen.gpu_hours
    front = tuned.pareto()
    assert tuned.chosen in front or not tuned.feasible
    assert all(a.gpu_hours < b.gpu_hours and a.attainment < b.attainment for a, b in pairwise(front))


def test_static_peak_is_sized_from_the_tuning_part_alone() -> None:
    whole = small_trace()
    parts = split(whole)
    ctx = context_for(parts.tuning, L4_8B, CONFIG)
    policy = build("static-peak", {"peak_utilization": 0.3}, ctx)
    assert isinstance(policy, Static)
    busier = context_for(parts.evaluation, L4_8B, CONFIG)  # the evaluation part doubles the rate
    assert build("static-peak", {"peak_utilization": 0.3}, busier).replicas > policy.replicas  # type: ignore[attr-defined]


def test_an_unknown_policy_is_refused(tuning_part: list[TraceRequest]) -> None:
    with pytest.raises(ValueError, match="tunable"):
        build("oracle", {}, context_for(tuning_part, L4_8B, CONFIG))


def test_the_evaluation_warm_up_replays_the_end_of_the_tuning_part() -> None:
    parts = split(small_trace())
    before = parts.before_evaluation
    assert max(r.arrival for r in before) < 0 <= min(r.arrival for r in parts.evaluation)
    ctx = context_for(parts.tuning, L4_8B, CONFIG)
    result = simulate(parts.evaluation, L4_8B, build("static-peak", {"peak_utilization": 0.3}, ctx), CONFIG, before)
    assert result.warmup_requests == sum(1 for r in before if r.arrival >= -CONFIG.warmup) > 0
    assert len(result.measured) == len(parts.evaluation)
