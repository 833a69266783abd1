"""The autoscaler's plug point: the spec becomes the policy's ScalingSpec, and without metrics nothing moves."""

from __future__ import annotations

import asyncio
from typing import Any

from infleet.autoscaler import policy
from infleet.operator import api, autoscaling

from .specs import good_spec


def spec_of(**overrides: Any) -> api.InferenceDeploymentSpec:
    return api.InferenceDeploymentSpec.model_validate(good_spec(**overrides))


def test_scaling_spec_carries_bounds_slos_and_windows() -> None:
    spec = spec_of(
        slo={"ttftP99": "2s", "tpotP99": "100ms"},
        scaling={
            "enabled": True,
            "minReplicas": 0,
            "maxReplicas": 6,
            "targetQueueDepth": 3,
            "scaleDownStabilization": "2m",
        },
    )
    s = autoscaling.scaling_spec(spec)
    assert (s.min_replicas, s.max_replicas, s.target_queue_per_replica) == (0, 6, 3.0)
    assert (s.ttft_slo, s.tpot_slo, s.e2e_slo) == (2.0, 0.1, None)
    assert (s.scale_up_window, s.scale_down_window) == (0.0, 120.0)


def test_without_an_observer_the_policy_holds() -> None:
    autoscaling.set_observer(None)
    spec = spec_of(replicas=3, scaling={"enabled": True, "minReplicas": 1, "maxReplicas": 8})
    obs = asyncio.run(autoscaling.observe(spec, {"readyReplicas": 3}, "x", "ns"))
    assert obs.missing and obs.replicas == 3
    decision = policy.decide(autoscaling.scaling_spec(spec), obs, (), obs.sampled_at)
    assert decision.replicas == 3 and decision.held
    out = autoscaling.status_from(decision, obs, 4)
    assert out["observed"] == {}
    assert any(c["type"] == "MetricsAvailable" and c["status"] != "True" for c in out["conditions"])


def test_observed_figures_reach_status() -> None:
    obs = policy.Observation(sampled_at=0.0, replicas=1, ttft_p99=0.8, queue_depth=2.0, tokens_per_second=150.0)
    decision = policy.Decision(replicas=1, reason="hold", recommendation=1)
    out = autoscaling.status_from(decision, obs, 1)
    assert out["observed"] == {"ttftP99Seconds": 0.8, "queueDepth": 2.0, "tokensPerSecond": 150.0}
