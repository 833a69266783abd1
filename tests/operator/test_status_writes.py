"""Every status the operator writes conforms to the CRD's status schema as the API server reads it: no field it
would prune silently, no type, pattern or bound it would refuse. Each writer's output goes through the status model
(`InferenceDeploymentStatus.patch`), and the model refuses what the schema does not declare."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from infleet.autoscaler import policy
from infleet.operator import api, autoscaling, model_status, observation, reconcile, status
from infleet.operator.observation import Snapshot

from .specs import good_spec

ROOT = Path(__file__).resolve().parents[2]
TYPES = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float), "boolean": bool}


def status_schema() -> dict[str, Any]:
    crd = yaml.safe_load((ROOT / "crds" / "inferencedeployments.infleet.dev.yaml").read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]


def problems(value: Any, schema: dict[str, Any], at: str = "status") -> list[str]:
    """What the API server would prune or refuse in `value` under a structural schema (the subset the CRD uses)."""
    kind = schema.get("type")
    if (kind and not isinstance(value, TYPES[kind])) or (kind in ("integer", "number") and isinstance(value, bool)):
        return [f"{at}: {value!r} is not {kind}"]
    found: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties", {})
        found += [f"{at}.{k}: not in the schema (pruned)" for k in value if k not in props]
        found += [f"{at}.{k}: required" for k in schema.get("required", []) if k not in value]
        found += [p for k, v in value.items() if k in props for p in problems(v, props[k], f"{at}.{k}")]
    if isinstance(value, list):
        found += [p for i, v in enumerate(value) for p in problems(v, schema.get("items", {}), f"{at}[{i}]")]
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            found.append(f"{at}: {value!r} does not match {schema['pattern']}")
        if len(value) > schema.get("maxLength", len(value)) or len(value) < schema.get("minLength", 0):
            found.append(f"{at}: length {len(value)} out of bounds")
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{at}: {value!r} not one of {schema['enum']}")
    return found


def spec_of(**overrides: Any) -> api.InferenceDeploymentSpec:
    return api.InferenceDeploymentSpec.model_validate(good_spec(**overrides))


def writes() -> dict[str, dict[str, Any]]:
    """One status from each writer, as its handler passes it to `apply_status`."""
    spec = spec_of(slo={"ttftP99": "1s", "tpotP99": "50ms"}, cost={"gpuHourlyPrice": 3.6}, replicas=2)
    body = {"metadata": {"name": "chat", "namespace": "ml", "uid": "u-1", "generation": 3}, "spec": good_spec()}
    owner = reconcile.owner_of(body)
    _, want, reason = reconcile.plan(body, {})
    deployment = {"kind": "Deployment", "status": {"replicas": 2, "readyReplicas": 1, "updatedReplicas": 2}}
    snap = Snapshot(100.0, {("ml", "chat"): {"ttft_p99": 0.5, "tpot_p99": 0.08, "ttft_good": 9, "ttft_bad": 1}})
    obs = observation.observation_from(snap, "ml", "chat", replicas=2)
    decision = policy.decide(autoscaling.scaling_spec(spec), policy.Observation(0.0, 2, missing="no source"), (), 0)
    return {
        "workload": reconcile.workload_status(spec, owner, 3, {}, want, [deployment]),
        "reconcile": reconcile.judged_status(spec, owner, 3, {}, want, [], reason),
        "observation": observation.observed_status(spec, {}, obs, observation.attainment_from(snap, "ml", "chat"), 3),
        "autoscaler": {**autoscaling.status_from(decision, obs, 3), "tier": "int8", "tierReason": "cheapest"},
        "model": {"conditions": [model_status.condition(spec_of(model={"uri": "s3://models/x/"}), [], 3)]},
        "degraded": {"conditions": [status.degraded_condition([("GPUsUnavailable", "no A100 node")], 3)]},
    }


@pytest.mark.parametrize("writer", sorted(writes()))
def test_each_writer_writes_what_the_crd_declares(writer: str) -> None:
    raw = writes()[writer]
    wire = api.InferenceDeploymentStatus.patch(raw).wire()
    assert wire == {k: v for k, v in raw.items() if v is not None}, "the model changed what the writer wrote"
    assert problems(wire, status_schema()) == []


def test_the_schema_check_can_fail() -> None:
    assert problems({"replicas": "two", "bogus": 1}, status_schema()) == [
        "status.bogus: not in the schema (pruned)",
        "status.replicas: 'two' is not integer",
    ]
    bad = {"conditions": [{"type": "Ready", "status": "Yes", "reason": "not a reason", "message": ""}]}
    assert len(problems(bad, status_schema())) == 3  # status enum, reason pattern, lastTransitionTime required


def test_a_field_the_crd_does_not_declare_is_refused_before_it_is_written() -> None:
    with pytest.raises(pydantic.ValidationError, match="readyReplica"):
        api.InferenceDeploymentStatus.patch({"readyReplica": 1})
    with pytest.raises(pydantic.ValidationError, match="ttftP99"):
        api.InferenceDeploymentStatus.patch({"observed": {"ttftP99": 0.5}})
    cond = status.condition(status.READY, True, "Ready", "ok", 1)
    with pytest.raises(pydantic.ValidationError, match="reason"):
        api.InferenceDeploymentStatus.patch({"conditions": [{**cond, "reason": "not camel case"}]})
