"""`spec.scaling.mode: advisory` on the real control plane: the autoscaler publishes its replica and tier decisions
(status, Events, the desired-replicas and desired-tier gauges) and applies neither.

The same set-up as the tier-choice test (the measured CPU profile of the SmolLM2 GGUF at the reference mix, an A100
price): the deployment starts on its first allowed tier, bf16, a budget between int8's capacity cost and bf16's leaves
bf16 over it and makes the chooser want int8, and spec.replicas = 3 above maxReplicas = 2 makes the policy want 2.
In advisory mode the deployment keeps bf16 and 3 pods."""

from __future__ import annotations

import json
from typing import Any

import pytest

from infleet.cluster.testing import FleetHandle, budget_between, capacity_cost, wait_for

from .conftest import OperatorProcess, apply, get, idep, wait_condition, wait_explained
from .specs import good_spec

pytestmark = pytest.mark.cluster

A100 = "NVIDIA-A100-SXM4-80GB"
GGUF = "file:///models/SmolLM2-135M-Instruct.Q4_1.gguf"


def advisory_spec() -> dict[str, Any]:
    return good_spec(
        model={"uri": GGUF, "servedName": "advised"},
        accelerator={"type": A100},
        quantization={"tier": "auto", "allowed": ["bf16", "int8"], "maxQualityLoss": 0.01},
        cost={
            "maxPerMillionTokens": budget_between(capacity_cost(GGUF, A100, "int8"), capacity_cost(GGUF, A100, "bf16"))
        },
        scaling={"enabled": True, "mode": "advisory", "minReplicas": 1, "maxReplicas": 2},
        replicas=3,
    )


def test_advisory_mode_publishes_decisions_and_applies_none(crds: FleetHandle, namespace: str, tmp_path: Any) -> None:
    operator = OperatorProcess(crds.kubeconfig, namespace, tmp_path).start("--replica-device", "cpu")
    try:
        apply(crds, namespace, idep("advised", advisory_spec()))

        def advised() -> dict[str, Any] | None:
            body = get(crds, namespace, "inferencedeployment", "advised")
            st = (body or {}).get("status") or {}
            return body if st.get("desiredTier") == "int8" and st.get("desiredReplicas") == 2 else None

        body = wait_explained(crds, namespace, "advised", advised, 180, "advice of int8 and 2 replicas", operator)
        assert body["spec"]["replicas"] == 3  # never scaled
        assert body["status"]["scalingReason"]
        body = wait_condition(crds, namespace, "advised", "Ready", operator=operator)
        assert body["status"].get("tier") != "int8"  # never rolled out
        pods = get(crds, namespace, "pods", selector="infleet.dev/deployment=advised")["items"]
        assert len(pods) == 3 and {p["metadata"]["labels"]["infleet.dev/tier"] for p in pods} == {"bf16"}

        def advice_events() -> set[str]:
            events = json.loads(crds.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
            return {
                e["reason"]
                for e in events
                if e["involvedObject"]["name"] == "advised" and "(not applied)" in e["message"]
            }

        wait_for(lambda: advice_events() == {"ScaleAdvised", "TierAdvised"}, timeout=60, what="advice events")

        def gauges() -> tuple[float, float, float, float]:
            labels = {"namespace": namespace, "deployment": "advised"}
            return (
                operator.metric("infleet_deployment_replicas", **labels),
                operator.metric("infleet_deployment_desired_replicas", **labels),
                operator.metric("infleet_deployment_tier_info", tier="bf16", **labels),
                operator.metric("infleet_deployment_desired_tier_info", tier="int8", **labels),
            )

        wait_for(lambda: gauges() == (3, 2, 1, 1), timeout=60, what="desired against actual in the gauges")
    finally:
        operator.stop()
