"""infleet's own policy in the simulator: `policy.decide` fed with the fleet's observations.

The capacity per replica is not a constant of the trace: it depends on the token mix (long prompts fill the step
budget with prefill), so it is re-estimated at each tick from the mix the observation reports over its window.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from infleet.autoscaler.policy import Decision, Observation, Recommendation, ScalingSpec, decide
from infleet.autoscaler.simulator.fleet import FleetObservation

# (mean prompt tokens, mean output tokens) -> tokens/s one replica sustains at the SLO: the tier's latency profile
CapacityAt = Callable[[float, float], float]


@dataclass
class CausalCapacity:
    """A replica's capacity for the recently observed token mix. Before any request has finished it has no
    estimate (the policy then scales on queues alone); in a window with no finished request it keeps the last."""

    capacity_at: CapacityAt
    estimate: float | None = None
    history: list[tuple[float, float]] = field(default_factory=list)  # (time, estimate) at each change
    _cache: dict[tuple[float, float], float] = field(default_factory=dict)

    def update(self, obs: FleetObservation) -> float | None:
        prompt, output = obs.prompt_tokens_per_request, obs.output_tokens_per_request
        if prompt is None or output is None:
            return self.estimate
        key = (float(f"{prompt:.3g}"), float(f"{output:.3g}"))  # a mix within 1% is the same mix
        if key not in self._cache:
            self._cache[key] = self.capacity_at(*key)
        estimate = self._cache[key]
        if estimate != self.estimate:
            self.history.append((obs.now, estimate))
        self.estimate = estimate
        return estimate


@dataclass
class InfleetPolicy:
    spec: ScalingSpec
    capacity: CausalCapacity | None = None  # None: the spec's capacity, as given
    name: str = "infleet"
    interval: float = 10.0
    history: tuple[Recommendation, ...] = ()
    decisions: list[tuple[float, Decision]] = field(default_factory=list)  # the ones that changed the count
    last: Decision | None = None  # the latest, hold or not: its conditions are what status would show

    def desired(self, obs: FleetObservation) -> int:
        observation = Observation(
            sampled_at=obs.now,
            replicas=obs.replicas,
            ready_replicas=obs.ready,
            queue_depth=obs.queue_depth,
            running=obs.running,
            tokens_per_second=obs.tokens_per_second,
            tokens_per_request=obs.tokens_per_request,
            ttft_p99=obs.ttft_p99,
            tpot_p99=obs.tpot_p99,
            held_requests=obs.held,
            ttft_attainment=obs.ttft_attainment,
            prompt_histogram=obs.prompt_histogram,
            arrival_rate=obs.arrivals_per_second,
        )
        spec = self.spec
        estimate = self.capacity.update(obs) if self.capacity is not None else None
        if estimate is not None and estimate > 0:
            spec = replace(spec, capacity_tokens_per_second=estimate)
        decision = decide(spec, observation, self.history, obs.now)
        self.history = decision.history
        self.last = decision
        if decision.replicas != obs.replicas:
            self.decisions.append((obs.now, decision))
        return decision.replicas
