"""The simulated cascade: an escalated request is served twice and judged from its arrival to the last model's first
token; nothing is lost or counted twice."""

from __future__ import annotations

import random

import pytest

from infleet.autoscaler.latency_model import MODELS, LatencyModel, device
from infleet.autoscaler.simulator.baselines import Static
from infleet.autoscaler.simulator.cascade import escalations, sample, simulate_cascade
from infleet.autoscaler.simulator.fleet import SimConfig, simulate
from infleet.autoscaler.simulator.trace import TraceRequest

FIRST = LatencyModel(device("H100"), MODELS["llama-3.1-8b"], "int4")
SECOND = LatencyModel(device("H100"), MODELS["llama-3.1-8b"], "bf16")


def trace(n: int = 300, seed: int = 1) -> list[TraceRequest]:
    rng = random.Random(seed)
    out, t = [], 0.0
    for _ in range(n):
        t += rng.expovariate(2.0)
        out.append(TraceRequest(t, rng.randint(100, 2000), rng.randint(2, 300)))
    return out


def test_no_escalation_is_the_first_deployment_alone() -> None:
    config = SimConfig(seed=0)
    result = simulate_cascade(trace(), (FIRST, Static(2)), (SECOND, Static(1)), config, rate=0.0)
    alone = simulate(trace(), FIRST, Static(2), config)
    assert result.escalated == 0 and result.second.requests == []
    assert result.slo_attainment == alone.slo_attainment(config.ttft_slo, config.tpot_slo)
    assert result.served_tokens == alone.served_tokens


def test_every_escalation_is_served_again_after_its_first_answer() -> None:
    config = SimConfig(seed=0)
    result = simulate_cascade(trace(), (FIRST, Static(2)), (SECOND, Static(1)), config, rate=1.0)
    assert result.escalated == len(trace()) == len(result.second.measured)
    by_finish = sorted(result.first.measured, key=lambda r: r.finish)  # the order they reach the second model
    for one, two in zip(by_finish, result.second.measured, strict=True):
        assert two.arrival == pytest.approx(one.finish)  # asked when the first answer was done
        assert (one.prompt, one.output) == (two.prompt, two.output)
    # judged end to end: a request within the SLO by the second model's own clock can still miss it overall
    own = result.second.slo_attainment(config.ttft_slo, config.tpot_slo)
    assert result.slo_attainment < own
    assert result.served_tokens == sum(r.prompt_tokens + r.output_tokens for r in trace())  # counted once


def test_both_deployments_are_paid_for() -> None:
    config = SimConfig(seed=0)
    result = simulate_cascade(trace(), (FIRST, Static(2)), (SECOND, Static(1)), config, rate=0.3)
    dollars = (result.first.gpu_seconds * 1.0 + result.second.gpu_seconds * 4.0) / 3600
    assert result.cost_per_million_tokens(1.0, 4.0) == pytest.approx(dollars / result.served_tokens * 1e6)
    assert 0.2 < result.escalated / result.measured < 0.4


def test_warm_up_escalations_load_the_second_deployment_without_being_judged() -> None:
    full = trace(600)
    before = [TraceRequest(r.arrival - full[300].arrival, r.prompt_tokens, r.output_tokens) for r in full[:300]]
    after = [TraceRequest(r.arrival - full[300].arrival, r.prompt_tokens, r.output_tokens) for r in full[300:]]
    config = SimConfig(seed=0, warmup=120.0)
    result = simulate_cascade(after, (FIRST, Static(2)), (SECOND, Static(1)), config, 0.5, before)
    assert result.measured == len(after)
    assert result.second.warmup_requests > 0


def test_the_draw_is_seeded_and_checked() -> None:
    assert (escalations(100, 0.25, 3) == escalations(100, 0.25, 3)).all()
    assert len(sample(trace(), 0.0, 0)) == 0 and len(sample(trace(), 1.0, 0)) == len(trace())
    with pytest.raises(ValueError, match="share"):
        escalations(10, 1.5, 0)
