"""A policy sees observations, never the trace: the simulator refuses a policy that holds it, an observation has no
trace to read, and infleet's capacity estimate follows a change of token mix only once it has happened."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from infleet.autoscaler.latency_model import MODELS, LatencyModel, device
from infleet.autoscaler.simulator.experiment import causal_capacity, infleet_spec
from infleet.autoscaler.simulator.fleet import CausalityError, FleetObservation, SimConfig, simulate
from infleet.autoscaler.simulator.infleet_policy import InfleetPolicy
from infleet.autoscaler.simulator.trace import TraceRequest

L4_8B = LatencyModel(device("L4"), MODELS["llama-3.1-8b"], "fp8")
SHIFT = 900.0
BEFORE, AFTER = (100, 500), (2000, 100)  # decode-heavy, then prefill-heavy: a replica's tokens/s about doubles


def shifting_trace() -> list[TraceRequest]:
    return [TraceRequest(float(t), *(BEFORE if t < SHIFT else AFTER)) for t in range(1800)]


@dataclass
class Peeker:
    """Sizes the fleet from the future: what a policy must not be able to do."""

    trace: list[TraceRequest]
    name: str = "peeker"
    interval: float = 10.0

    def desired(self, obs: FleetObservation) -> int:
        return 1 + sum(1 for r in self.trace if obs.now <= r.arrival < obs.now + 60) // 100


@dataclass
class Hoarder:
    """Holds requests copied out of the trace, a few levels down."""

    notes: dict[str, list[object]] = field(default_factory=dict)
    name: str = "hoarder"
    interval: float = 10.0

    def desired(self, obs: FleetObservation) -> int:
        return 1


class Reader:
    """Asks the observation for the trace."""

    name, interval = "reader", 10.0

    def desired(self, obs: FleetObservation) -> int:
        return len(obs.trace)  # type: ignore[attr-defined]


def test_the_simulator_rejects_a_policy_that_reads_the_trace() -> None:
    trace = shifting_trace()[:100]
    config = SimConfig()
    with pytest.raises(CausalityError, match=r"policy 'peeker' holds the trace \(policy.trace\)"):
        simulate(trace, L4_8B, Peeker(trace), config)
    with pytest.raises(CausalityError, match=r"holds the trace \(policy.notes\['future'\]\[0\]\)"):
        simulate(trace, L4_8B, Hoarder({"future": [trace[50]]}), config)
    with pytest.raises(CausalityError, match=r"FleetObservation has no 'trace'.*never the trace"):
        simulate(trace, L4_8B, Reader(), config)
    assert simulate(trace, L4_8B, Hoarder({"own": [1, 2]}), config).failed == 0  # its own numbers are fine


def test_the_capacity_estimate_follows_a_token_mix_shift_after_it_happens() -> None:
    config = SimConfig(cold_start=20, cold_start_jitter=0)
    capacity = causal_capacity(L4_8B, config)
    policy = InfleetPolicy(infleet_spec(config), capacity)
    result = simulate(shifting_trace(), L4_8B, policy, config)
    assert result.failed == 0
    before = capacity.capacity_at(*BEFORE)
    after = capacity.capacity_at(*AFTER)
    assert after > 1.5 * before
    history = capacity.history
    assert history[0][1] == pytest.approx(before)  # the first estimate is the first mix's: nothing else was seen
    moved = [t for t, estimate in history if estimate != pytest.approx(before)]
    assert moved and min(moved) > SHIFT  # nothing of the later mix is known before it arrives
    settled_at, settled = history[-1]  # the history keeps changes only: this one held to the end
    assert settled == pytest.approx(after, rel=0.01) and capacity.estimate == settled
    assert settled_at <= SHIFT + config.mix_window + 60  # the old mix has left the window (plus a tick and a request)
