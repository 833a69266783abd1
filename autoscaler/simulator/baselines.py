"""The autoscalers infleet is measured against, each with its documented default behaviour.

- `HPA`: Kubernetes' HorizontalPodAutoscaler on GPU utilization (busy fraction, as DCGM reports it), target 70%,
  10% tolerance, 15 s sync, scale-up at most max(4 pods, 100%) per period, 300 s scale-down stabilization.
- `KEDA`: a queue-length scaler (`vllm:num_requests_waiting`, AverageValue target per replica) driving the same
  HPA machinery, as KEDA does.
- `KPA`: Knative's autoscaler on concurrency: 60 s stable window, 6 s panic window entered at 200% of the ready
  capacity, target utilization 70%, 2 s tick, never scaling down in panic, scale-down at most halving.
- `Static`: a fixed fleet sized for the trace's peak.
Each baseline gets the same per-replica capacity numbers as infleet's policy, so only the control logic differs.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from infleet.autoscaler.simulator.fleet import FleetObservation


@dataclass
class HPABehavior:
    """The HPA's stabilization windows and scaling rate limits (autoscaling/v2 defaults)."""

    min_replicas: int = 1
    max_replicas: int = 64
    up_window: float = 0.0
    down_window: float = 300.0
    tolerance: float = 0.1
    history: deque[tuple[float, int]] = field(default_factory=deque)

    def apply(self, now: float, current: int, ratio: float, proposal: int) -> int:
        if current > 0 and abs(ratio - 1.0) <= self.tolerance:
            proposal = current
        self.history.append((now, proposal))
        while self.history and self.history[0][0] < now - max(self.up_window, self.down_window):
            self.history.popleft()
        if proposal > current:
            proposal = max(current, min(r for t, r in self.history if t >= now - self.up_window))
            proposal = min(proposal, current + max(4, current))
        elif proposal < current:
            proposal = min(current, max(r for t, r in self.history if t >= now - self.down_window))
        return min(max(proposal, self.min_replicas), self.max_replicas)


@dataclass
class HPA:
    target_utilization: float = 0.7
    behavior: HPABehavior = field(default_factory=HPABehavior)
    name: str = "hpa-gpu-util"
    interval: float = 15.0

    def desired(self, obs: FleetObservation) -> int:
        # unready pods count as 0% when scaling up, as the HPA does; with none ready, hold
        if obs.ready == 0:
            return max(obs.replicas, self.behavior.min_replicas)
        ratio = obs.utilization * obs.ready / (self.target_utilization * max(obs.replicas, 1))
        proposal = math.ceil(obs.replicas * ratio - 1e-9)
        return self.behavior.apply(obs.now, obs.replicas, ratio, proposal)


@dataclass
class KEDA:
    queue_per_replica: float = 4.0  # the ScaledObject's threshold on waiting requests
    behavior: HPABehavior = field(default_factory=HPABehavior)
    name: str = "keda-queue"
    interval: float = 15.0

    def desired(self, obs: FleetObservation) -> int:
        waiting = obs.queue_depth + obs.held
        proposal = math.ceil(waiting / self.queue_per_replica - 1e-9)
        ratio = waiting / (self.queue_per_replica * obs.replicas) if obs.replicas else math.inf
        return self.behavior.apply(obs.now, obs.replicas, ratio, proposal)


@dataclass
class KPA:
    target_concurrency: float  # per replica (containerConcurrency target)
    target_utilization: float = 0.7
    panic_threshold: float = 2.0
    stable_window: float = 60.0
    min_replicas: int = 1
    max_replicas: int = 64
    max_scale_down_rate: float = 2.0
    name: str = "knative-kpa"
    interval: float = 2.0
    panic_until: float = -math.inf
    panic_desired: int = 0

    def desired(self, obs: FleetObservation) -> int:
        per_pod = self.target_concurrency * self.target_utilization
        stable = math.ceil(obs.concurrency_stable / per_pod - 1e-9)
        panic = math.ceil(obs.concurrency_panic / per_pod - 1e-9)
        ready = max(obs.ready, 1)
        if obs.concurrency_panic / per_pod >= self.panic_threshold * ready:
            self.panic_until = obs.now + self.stable_window
        if obs.now < self.panic_until:
            self.panic_desired = max(self.panic_desired, panic, obs.replicas)  # no scale-down while panicking
            want = self.panic_desired
        else:
            self.panic_desired = 0
            want = stable
        want = max(want, math.floor(obs.replicas / self.max_scale_down_rate))
        return min(max(want, self.min_replicas), self.max_replicas)


@dataclass
class Static:
    replicas: int
    name: str = "static-peak"
    interval: float = 60.0

    def desired(self, obs: FleetObservation) -> int:
        return self.replicas
