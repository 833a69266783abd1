"""infleet's own policy in the simulator: `policy.decide` fed with the fleet's observations."""

from __future__ import annotations

from dataclasses import dataclass, field

from infleet.autoscaler.policy import Decision, Observation, Recommendation, ScalingSpec, decide
from infleet.autoscaler.simulator.fleet import FleetObservation


@dataclass
class InfleetPolicy:
    spec: ScalingSpec
    name: str = "infleet"
    interval: float = 10.0
    history: tuple[Recommendation, ...] = ()
    decisions: list[tuple[float, Decision]] = field(default_factory=list)

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
        )
        decision = decide(self.spec, observation, self.history, obs.now)
        self.history = decision.history
        if decision.replicas != obs.replicas:
            self.decisions.append((obs.now, decision))
        return decision.replicas
