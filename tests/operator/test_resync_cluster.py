"""A resync of an unchanged fleet writes nothing: after an operator restart, every InferenceDeployment is resumed
(reconciled again), and the operator sends no write request (not the reconcile, not the observation loop's first
tick, not kopf on its behalf): every object keeps its resourceVersion. The rendered objects carry a hash of
themselves; the workloads in the watch cache show it."""

from __future__ import annotations

import time
from typing import Any

import pytest

from infleet.cluster.testing import FleetHandle, wait_for
from infleet.operator import observation

from .conftest import OperatorProcess, apply, get, idep, wait_condition
from .specs import good_spec

pytestmark = pytest.mark.cluster

H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-80GB"
KINDS = "inferencedeployments,deployments,statefulsets,services,poddisruptionbudgets,replicasets"
WRITES = ("POST", "PUT", "PATCH", "DELETE")


def versions(fleet: FleetHandle, namespace: str) -> dict[str, str]:
    items = get(fleet, namespace, KINDS)["items"]
    return {f"{i['kind']}/{i['metadata']['name']}": i["metadata"]["resourceVersion"] for i in items}


def writes(operator: OperatorProcess) -> float:
    return sum(operator.metric("infleet_operator_api_requests_total", verb=v) for v in WRITES)


def settled(fleet: FleetHandle, namespace: str) -> dict[str, str]:
    """The objects' versions once two looks 3 s apart agree (trailing status writes from workload events done)."""
    last: dict[str, Any] = {}

    def same() -> dict[str, str] | None:
        nonlocal last
        now = versions(fleet, namespace)
        agreed, last = now == last, now
        return now if agreed else None

    return wait_for(same, timeout=90, interval=3, what="the objects to stop changing")


def test_a_restarted_operator_resumes_every_deployment_without_a_write(
    crds: FleetHandle, namespace: str, operator: OperatorProcess
) -> None:
    names = ["plain", "two", "group"]
    specs = [
        good_spec(accelerator={"type": A100}),
        good_spec(accelerator={"type": A100}, replicas=2),
        good_spec(accelerator={"type": H100}, parallelism={"tensor": 16}, replicas=1),  # a two-node group
    ]
    apply(crds, namespace, *[idep(n, s) for n, s in zip(names, specs, strict=True)])
    for n in names:
        wait_condition(crds, namespace, n, "Ready", operator=operator, timeout=150)
    before = settled(crds, namespace)
    assert len(before) >= 3 + 2 * 3  # the owners, and their workloads, Services and PDBs

    operator.stop()
    operator.start()
    wait_for(
        lambda: operator.metric("infleet_operator_reconcile_total", trigger="resume") == len(names),
        timeout=90,
        what="every deployment resumed",
    )
    # anything trailing: the replica refresh after each resume, workload events, and a whole interval of the
    # observation loop, whose first tick after a start finds nothing of its own written yet
    time.sleep(observation.INTERVAL + 5)
    assert operator.metric("infleet_operator_applies_skipped_total") == len(names)
    assert writes(operator) == 0, operator.metrics()
    assert operator.metric("infleet_operator_status_writes_total") == 0, "the observation loop's first tick too"
    assert versions(crds, namespace) == before

    # the hash is no excuse to miss a change: a spec change is applied at once
    apply(crds, namespace, idep("plain", good_spec(accelerator={"type": A100}, replicas=2)))
    wait_for(
        lambda: get(crds, namespace, "deployment", "plain")["spec"]["replicas"] == 2, timeout=60, what="the scale-up"
    )
    assert operator.metric("infleet_operator_applies_skipped_total") == len(names)
