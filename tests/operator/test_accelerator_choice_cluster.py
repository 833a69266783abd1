"""The operator moves an `auto` deployment to a cheaper allowed GPU product on the real control plane: the choice is
written to status with its reason, announced by an event, and rolled out to pods with node affinity to the new
product, which the scheduler places on nodes of that product.

The operator runs with `--replica-device cpu`, so the shipped measured CPU profile of the SmolLM2 GGUF prices every
product alike per replica, here at the reference mix of 512 prompt + 128 output tokens (no Prometheus, no traffic
mix), at 70% planned utilization: the A100 ($2.50/h) costs 3.1x the L4 ($0.80/h) per token in every tier. A budget
between the L4's bf16 capacity cost and the A100's int8 one (both from the shipped profile) puts the A100 over it
and the L4 within it, and a product over the budget is left at once (no dwell). The deployment starts with the A100
alone allowed, so that it runs there before the L4 is offered. Pods use a non-infleet image (KWOK fakes them); no
Prometheus is configured, which the capacity cost does not need."""

from __future__ import annotations

import json
from typing import Any

import pytest

from infleet.cluster.testing import FleetHandle, budget_between, capacity_cost, wait_for

from .conftest import OperatorProcess, apply, get, idep, wait_condition, wait_explained
from .specs import good_spec

pytestmark = pytest.mark.cluster

A100, L4 = "NVIDIA-A100-SXM4-80GB", "NVIDIA-L4"
GGUF = "file:///models/SmolLM2-135M-Instruct.Q4_1.gguf"  # the measured profile's model file (never loaded: fake pods)


def pods_on(crds: FleetHandle, namespace: str, product: str) -> bool:
    """The deployment's one live pod is on a node of `product`, with node affinity to it."""
    items = get(crds, namespace, "pods", selector="infleet.dev/deployment=accel")["items"]
    nodes = {p["spec"].get("nodeName") for p in items if p["metadata"].get("deletionTimestamp") is None}
    if len(items) != 1 or None in nodes:
        return False
    labels = [json.loads(crds.kubectl("get", "node", n, "-o", "json").stdout)["metadata"]["labels"] for n in nodes]
    affinity = json.dumps(items[0]["spec"]["affinity"])
    return all(lb.get("nvidia.com/gpu.product") == product for lb in labels) and product in affinity


def test_a_budget_moves_an_auto_deployment_to_a_cheaper_allowed_product(
    crds: FleetHandle, namespace: str, tmp_path: Any
) -> None:
    tight = budget_between(capacity_cost(GGUF, L4, "bf16"), capacity_cost(GGUF, A100, "int8"))
    operator = OperatorProcess(crds.kubeconfig, namespace, tmp_path).start("--replica-device", "cpu")

    def spec(budget: float, allowed: list[str]) -> dict[str, Any]:
        return good_spec(
            model={"uri": GGUF, "servedName": "accel"},
            accelerator={"type": A100, "allowed": allowed},
            quantization={"tier": "auto", "allowed": ["bf16", "int8"], "maxQualityLoss": 0.01},
            cost={"maxPerMillionTokens": budget},
            scaling={"enabled": True, "minReplicas": 1, "maxReplicas": 1},
            replicas=1,
        )

    try:
        # it runs on the A100 first; then the L4 is allowed and the budget tightened past the A100's cost
        apply(crds, namespace, idep("accel", spec(200.0, [A100])))

        def kept() -> dict[str, Any] | None:
            body = get(crds, namespace, "inferencedeployment", "accel")
            st = (body or {}).get("status") or {}
            return body if st.get("accelerator") == A100 and "keep bf16" in st.get("tierReason", "") else None

        wait_explained(crds, namespace, "accel", kept, 180, "the chooser to keep bf16 on the A100", operator)
        wait_condition(crds, namespace, "accel", "Ready", operator=operator)
        wait_for(lambda: pods_on(crds, namespace, A100), timeout=120, what="the pod on an A100 node")
        apply(crds, namespace, idep("accel", spec(tight, [A100, L4])))

        def on_l4() -> dict[str, Any] | None:
            body = get(crds, namespace, "inferencedeployment", "accel")
            return body if ((body or {}).get("status") or {}).get("accelerator") == L4 else None

        moved = wait_explained(crds, namespace, "accel", on_l4, 180, "a move to the L4", operator)
        st = moved["status"]
        assert st["tier"] == "bf16" and st["desiredAccelerator"] == L4
        assert f"over the ${tight:g}/1M budget" in st["tierReason"] and "on NVIDIA-L4" in st["tierReason"]
        assert st["acceleratorReason"].startswith("chosen by the autoscaler")

        wait_for(lambda: pods_on(crds, namespace, L4), timeout=240, what="the pod rolled out onto an L4 node")

        def changed_event() -> bool:
            events = json.loads(crds.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
            return any(
                e["reason"] == "AcceleratorChanged" and e["message"].startswith(f"{A100} -> {L4}: ") for e in events
            )

        wait_for(changed_event, timeout=60, what="an AcceleratorChanged event")
        body = wait_condition(crds, namespace, "accel", "Progressing", "False", operator=operator)
        # the reconcile kept the product and the autoscaler's reason rather than writing its own
        assert body["status"]["accelerator"] == L4 and body["status"]["acceleratorReason"].startswith("chosen by")
    finally:
        operator.stop()
