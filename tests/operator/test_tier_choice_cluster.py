"""The operator applies the tier chooser under `quantization.tier: auto` on the real control plane: a cost budget the
running tier cannot meet moves the deployment to a cheaper tier, written to status with its reason, announced by an
event, rolled out new pods before old, and exported as the dashboards' tier series.

The operator runs with `--replica-device cpu`, so the shipped measured CPU profile of the SmolLM2 GGUF prices the
tiers. No Prometheus is configured, so no traffic mix is known and the chooser prices at the reference mix (512
prompt + 128 output tokens), at the A100's $2.50/h and 70% planned utilization. Under a loose budget the chooser keeps
bf16 (best quality); a budget between int8's capacity cost and bf16's, both computed from the shipped profile
(`capacity_cost`), leaves bf16 over it. Pods use a non-infleet image (KWOK fakes them); the capacity cost needs no
Prometheus."""

from __future__ import annotations

import json
from typing import Any

import pytest

from infleet.cluster.testing import FleetHandle, budget_between, capacity_cost, wait_for

from .conftest import OperatorProcess, RolloutRecorder, apply, get, idep, wait_condition, wait_explained
from .specs import good_spec

pytestmark = pytest.mark.cluster

A100 = "NVIDIA-A100-SXM4-80GB"
GGUF = "file:///models/SmolLM2-135M-Instruct.Q4_1.gguf"  # the measured profile's model file (never loaded: fake pods)


def auto_spec(budget: float, allowed: list[str]) -> dict[str, Any]:
    return good_spec(
        model={"uri": GGUF, "servedName": "auto"},
        accelerator={"type": A100},
        quantization={"tier": "auto", "allowed": allowed, "maxQualityLoss": 0.01},
        cost={"maxPerMillionTokens": budget},
        scaling={"enabled": True, "minReplicas": 2, "maxReplicas": 2},
        replicas=2,
    )


def pods(fleet: FleetHandle, ns: str, name: str) -> list[dict[str, Any]]:
    return list(get(fleet, ns, "pods", selector=f"infleet.dev/deployment={name}")["items"])


def ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (pod.get("status") or {}).get("conditions", []))


def test_a_tighter_budget_moves_an_auto_tier_with_a_surge_rollout(
    crds: FleetHandle, namespace: str, tmp_path: Any
) -> None:
    bf16, int8 = (capacity_cost(GGUF, A100, t) for t in ("bf16", "int8"))
    tight = budget_between(int8, bf16)
    operator = OperatorProcess(crds.kubeconfig, namespace, tmp_path).start("--replica-device", "cpu")
    try:
        apply(crds, namespace, idep("auto", auto_spec(budget=200.0, allowed=["bf16", "int8"])))
        wait_condition(crds, namespace, "auto", "Ready", operator=operator)

        def reason_has(text: str) -> dict[str, Any] | None:
            body = get(crds, namespace, "inferencedeployment", "auto")
            return body if text in ((body or {}).get("status") or {}).get("tierReason", "") else None

        loose = wait_explained(
            crds, namespace, "auto", lambda: reason_has("keep bf16"), 180, "the chooser to keep bf16", operator
        )
        assert loose["status"]["tier"] == "bf16" and "smollm2-135m-cpu.json" in loose["status"]["tierReason"]
        assert operator.metric("infleet_deployment_tier_info", namespace=namespace, deployment="auto", tier="bf16") == 1

        recorder = RolloutRecorder(crds, namespace, "auto", new_tier="int8")
        apply(crds, namespace, idep("auto", auto_spec(budget=tight, allowed=["bf16", "int8"])))
        over = f"over the ${tight:g}/1M budget"
        moved = wait_explained(crds, namespace, "auto", lambda: reason_has(over), 180, "a move to int8", operator)
        assert moved["status"]["tier"] == "int8"
        assert moved["status"]["tierReason"].startswith(f"bf16 (${bf16:.3g}/1M tokens at capacity) is {over}")

        def rolled_out() -> bool:
            current = pods(crds, namespace, "auto")
            return [p["metadata"]["labels"]["infleet.dev/tier"] for p in current if ready(p)] == ["int8"] * 2 and len(
                current
            ) == 2

        wait_for(rolled_out, timeout=240, what="rollout to int8")
        recorder.stop()
        assert not recorder.violations, recorder.violations
        assert recorder.most_pods > 2, "no surge pod was seen: new pods must start before old ones go"

        def tier_changed_event() -> bool:
            events = json.loads(crds.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
            return any(
                e["reason"] == "TierChanged"
                and e["message"].startswith("bf16 -> int8: ")
                and e["involvedObject"]["name"] == "auto"
                for e in events
            )

        wait_for(tier_changed_event, timeout=60, what="a TierChanged event for bf16 -> int8")
        body = wait_condition(crds, namespace, "auto", "Progressing", "False", operator=operator)
        assert body["status"]["tier"] == "int8" and body["status"]["readyReplicas"] == 2
        # the reconcile kept the chooser's reason rather than writing its own
        assert over in body["status"]["tierReason"]

        def tier_series() -> dict[str, float]:
            return {
                t: operator.metric("infleet_deployment_tier_info", namespace=namespace, deployment="auto", tier=t)
                for t in ("bf16", "int8")
            }

        wait_for(lambda: tier_series() == {"bf16": 0, "int8": 1}, timeout=60, what="the tier gauge to follow status")
        assert operator.metric("infleet_deployment_replicas", namespace=namespace, deployment="auto") == 2
        assert operator.metric("infleet_deployment_desired_replicas", namespace=namespace, deployment="auto") == 2
    finally:
        operator.stop()
