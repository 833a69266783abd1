"""A replica status write from a workload event that cannot reach the API server is not lost: the status writer
keeps the event's part and retries until the write gets through (kopf does not retry event handlers, and a settled
workload sends no more events).
A fake API stands in for the server here, because making a real one refuse exactly one write is not possible."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from infleet.operator import api, handlers
from infleet.operator.kube import KubeError
from infleet.operator.state import OperatorState

from .specs import good_spec

NS, NAME, UID = "repair", "d0857", "0d8f6a8e-0000-4000-8000-000000000001"


class FlakyKube:
    """Serves one Deployment and fails the first `failures` status writes as an unreachable API server does."""

    def __init__(self, deployment: dict[str, Any], failures: int, error: KubeError) -> None:
        self.deployment, self.failures, self.error = deployment, failures, error
        self.written: list[dict[str, Any]] = []
        self.gets = 0

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        self.gets += 1
        return self.deployment if (kind, namespace, name) == ("Deployment", NS, NAME) else None

    async def apply_status(
        self, namespace: str, name: str, status: api.InferenceDeploymentStatus, manager: str = ""
    ) -> None:
        if self.failures:
            self.failures -= 1
            raise self.error
        self.written.append(status.wire())


def owner() -> dict[str, Any]:
    spec = good_spec(accelerator={"type": "NVIDIA-A100-SXM4-80GB"})
    meta = {"name": NAME, "namespace": NS, "uid": UID, "generation": 1}
    return {"metadata": meta, "spec": spec, "status": {"observedGeneration": 1}}  # reconciled


def ready_deployment() -> dict[str, Any]:
    labels = {"infleet.dev/deployment": NAME, "app.kubernetes.io/managed-by": "infleet"}
    refs = [{"kind": "InferenceDeployment", "name": NAME, "uid": UID, "controller": True}]
    meta = {"name": NAME, "namespace": NS, "generation": 1, "labels": labels, "ownerReferences": refs}
    status = {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1}
    return {"kind": "Deployment", "metadata": meta, "spec": {"replicas": 1}, "status": status}


async def deliver_ready_event(kube: FlakyKube, memo: OperatorState) -> None:
    ideps = {(NS, NAME): [owner()]}
    gpu_nodes = {"NVIDIA-A100-SXM4-80GB": [8]}
    memo.kube = kube
    logger = logging.getLogger("test")
    await handlers._on_workload_event(
        "Deployment",
        "MODIFIED",
        ready_deployment(),
        memo,
        ideps,
        gpu_nodes,
        {},
        logger,
    )


def ready_condition(status: dict[str, Any]) -> str:
    return next(c["status"] for c in status["conditions"] if c["type"] == "Ready")


def test_a_failed_write_is_retried_until_the_status_is_ready() -> None:
    async def scenario() -> FlakyKube:
        kube = FlakyKube(ready_deployment(), failures=2, error=KubeError(0, "ConnectTimeout", ""))
        memo = OperatorState()
        await deliver_ready_event(kube, memo)
        assert kube.written == [], "the event's own write failed"
        retry = memo.status_entries[(NS, NAME)].flush
        assert retry is not None
        await asyncio.wait_for(retry, timeout=60)
        return kube

    kube = asyncio.run(scenario())
    assert kube.failures == 0, "both failures were met"
    assert len(kube.written) == 1
    assert kube.written[0]["readyReplicas"] == 1 and ready_condition(kube.written[0]) == "True"


def test_a_refused_write_is_not_retried() -> None:
    memo = OperatorState()

    async def scenario() -> None:
        kube = FlakyKube(ready_deployment(), failures=1, error=KubeError(422, "Invalid", "status.replicas: bad"))
        await deliver_ready_event(kube, memo)

    with pytest.raises(KubeError, match="422"):
        asyncio.run(scenario())
    assert memo.status_entries[(NS, NAME)].flush is None
