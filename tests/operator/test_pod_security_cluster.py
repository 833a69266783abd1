"""Runtime pods pass Pod Security "restricted", as the real API server's PodSecurity admission enforces it.

Each pod template the operator renders (one-pod replicas, multi-node group pods, vLLM, a model on a PVC) is created
as a Pod in a namespace labelled `pod-security.kubernetes.io/enforce: restricted`, server-side dry run (admission
runs, nothing is stored). The same template with its security contexts removed is refused, so the check can fail.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from infleet.cluster.testing import FleetHandle
from infleet.operator import api, resources
from infleet.operator.resources import Owner

from .specs import good_spec

pytestmark = pytest.mark.cluster

OWNER = Owner("llama", "serving", "uid-1")
CASES: dict[str, dict[str, Any]] = {
    "infleet": {},
    "vllm": {"runtime": {"engine": "vllm"}},
    "pvc-model": {"model": {"uri": "pvc://weights/llama/8b"}},
    "multi-node": {"parallelism": {"tensor": 8, "pipeline": 2}, "accelerator": {"type": "NVIDIA-H100-80GB-HBM3"}},
}


def pod_specs(overrides: dict[str, Any]) -> list[dict[str, Any]]:
    spec = api.InferenceDeploymentSpec.model_validate(good_spec(**overrides))
    workloads = [
        o for o in resources.desired(spec, OWNER, "bf16", 8).objects if o["kind"] in ("Deployment", "StatefulSet")
    ]
    assert workloads
    return [w["spec"]["template"]["spec"] for w in workloads]


def dry_run_pod(core: client.CoreV1Api, namespace: str, spec: dict[str, Any]) -> None:
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "pss-"}, "spec": spec}
    core.create_namespaced_pod(namespace, body, dry_run="All")


@pytest.fixture
def restricted(fleet: FleetHandle, namespace: str) -> str:
    labels = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    fleet.core.patch_namespace(namespace, {"metadata": {"labels": labels}})
    return namespace


@pytest.mark.parametrize("case", sorted(CASES))
def test_runtime_pods_are_admitted_under_restricted(fleet: FleetHandle, restricted: str, case: str) -> None:
    for spec in pod_specs(CASES[case]):
        dry_run_pod(fleet.core, restricted, spec)


def test_the_same_pod_without_security_contexts_is_refused(fleet: FleetHandle, restricted: str) -> None:
    spec = copy.deepcopy(pod_specs({})[0])
    spec.pop("securityContext")
    for c in spec["containers"]:
        c.pop("securityContext")
    with pytest.raises(ApiException) as refused:
        dry_run_pod(fleet.core, restricted, spec)
    assert refused.value.status == 403 and "violates PodSecurity" in str(refused.value.body)
