"""The bad-spec table against the real API server and the running operator.

Rejected specs must fail `kubectl apply` with a message naming the field; accepted-but-wrong specs must turn
`Degraded` with a reason and a Warning event, while a good deployment beside them still becomes Ready.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from infleet.cluster.testing import FleetHandle, fresh_namespace, wait_for
from infleet.operator.api import MAX_NAME_LENGTH

from .conftest import OperatorProcess, apply, get, idep, wait_condition
from .specs import BAD_SPECS, BadSpec, good_spec

pytestmark = pytest.mark.cluster

REJECTED = [b for b in BAD_SPECS if b.outcome.startswith("rejected")]
DEGRADED = [b for b in BAD_SPECS if b.outcome == "degraded"]


@pytest.fixture(scope="module")
def shared_namespace(crds: FleetHandle) -> Iterator[str]:
    yield from fresh_namespace(crds)


@pytest.mark.parametrize("bad", REJECTED, ids=lambda b: b.name)
def test_api_server_rejects_with_the_field_named(crds: FleetHandle, shared_namespace: str, bad: BadSpec) -> None:
    name = f"bad-{bad.name}"
    if bad.outcome == "rejected-update":
        apply(crds, shared_namespace, idep(name, bad.spec()))
        proc = apply(crds, shared_namespace, idep(name, bad.updated()), check=False)
    else:
        proc = apply(crds, shared_namespace, idep(name, bad.spec()), check=False)
    assert proc.returncode != 0, f"{bad.name} was accepted:\n{proc.stdout}"
    assert bad.field in proc.stderr, f"{bad.name}: message does not name {bad.field}:\n{proc.stderr}"


def test_good_spec_is_accepted_with_defaults(crds: FleetHandle, shared_namespace: str) -> None:
    apply(crds, shared_namespace, idep("defaults", good_spec()))
    spec = get(crds, shared_namespace, "inferencedeployment", "defaults")["spec"]
    assert spec["runtime"]["engine"] == "infleet" and spec["runtime"]["maxBatchTokens"] == 8192
    assert spec["parallelism"] == {"tensor": 1, "pipeline": 1}
    assert spec["quantization"]["tier"] == "auto" and spec["quantization"]["allowed"] == ["bf16", "fp8", "int8", "int4"]
    assert spec["scaling"]["enabled"] is False and spec["scaling"]["scaleDownStabilization"] == "300s"


def test_a_draft_model_is_accepted_with_method_draft(crds: FleetHandle, shared_namespace: str) -> None:
    speculative = {"method": "draft", "numTokens": 3, "draftModel": "file:///models/small.gguf"}
    apply(crds, shared_namespace, idep("draft", good_spec(runtime={"image": "x", "speculative": speculative})))
    got = get(crds, shared_namespace, "inferencedeployment", "draft")["spec"]["runtime"]["speculative"]
    assert got["method"] == "draft" and got["draftModel"] == "file:///models/small.gguf"


def test_names_are_bounded_so_derived_names_fit(crds: FleetHandle, shared_namespace: str) -> None:
    longest = "n" * MAX_NAME_LENGTH
    apply(crds, shared_namespace, idep(longest, good_spec()))
    proc = apply(crds, shared_namespace, idep(longest + "x", good_spec()), check=False)
    assert proc.returncode != 0 and f"at most {MAX_NAME_LENGTH} characters" in proc.stderr, proc.stderr


def test_e2e_slo_is_spelled_e2eP99(crds: FleetHandle, shared_namespace: str) -> None:
    apply(crds, shared_namespace, idep("e2e-slo", good_spec(slo={"e2eP99": "30s"})))
    assert get(crds, shared_namespace, "inferencedeployment", "e2e-slo")["spec"]["slo"]["e2eP99"] == "30s"
    proc = apply(crds, shared_namespace, idep("e2e-old", good_spec(slo={"e2EP99": "30s"})), check=False)
    assert proc.returncode != 0 and "e2EP99" in proc.stderr, "the old spelling must be refused, not silently dropped"


def test_operator_degrades_what_only_it_can_judge(crds: FleetHandle, namespace: str, operator: OperatorProcess) -> None:
    apply(crds, namespace, idep("good", good_spec()), *[idep(b.name, b.spec()) for b in DEGRADED])
    for bad in DEGRADED:
        body = wait_condition(crds, namespace, bad.name, "Degraded", "True", bad.field, operator=operator)
        assert body["status"]["conditions"], bad.name
    body = wait_condition(crds, namespace, "good", "Ready", "True", operator=operator)
    assert body["status"]["readyReplicas"] == 1
    assert next(c for c in body["status"]["conditions"] if c["type"] == "Degraded")["status"] == "False"

    def warnings() -> set[str] | None:
        events = get(crds, namespace, "events")["items"]
        seen = {e["reason"] for e in events if e["type"] == "Warning"}
        return seen if {b.field for b in DEGRADED} <= seen else None

    wait_for(warnings, timeout=30, what="a Warning event per Degraded reason")
    # one event per reason, not a storm: the operator does not re-announce on every pass
    events = get(crds, namespace, "events")["items"]
    for bad in DEGRADED:
        count = sum(e.get("count", 1) for e in events if e["reason"] == bad.field)
        assert count <= 2, f"{bad.field} announced {count} times"
    assert operator.proc is not None and operator.proc.poll() is None
