"""The operator against the real local control plane: placement, groups, status, scaling, rollout, drift,
restarts and garbage collection. Pods use a non-infleet image, so KWOK runs (fakes) them and marks them Ready."""

from __future__ import annotations

import time
from typing import Any

import pytest

from infleet.cluster.testing import FleetHandle, wait_for

from .conftest import (
    ConditionRecorder,
    OperatorProcess,
    RolloutRecorder,
    apply,
    conditions,
    get,
    idep,
    wait_condition,
    wait_explained,
)
from .specs import good_spec

pytestmark = pytest.mark.cluster

H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-80GB"


def a100_spec(**overrides: Any) -> dict[str, Any]:
    """Single-GPU replicas on the A100 pool (32 GPUs), which other suites leave mostly free; the L4 pool has 8."""
    return good_spec(**{"accelerator": {"type": A100}, **overrides})


def pods(fleet: FleetHandle, ns: str, name: str) -> list[dict[str, Any]]:
    return list(get(fleet, ns, "pods", selector=f"infleet.dev/deployment={name}")["items"])


def ready(pod: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True" for c in (pod.get("status") or {}).get("conditions") or []
    )


def node_products(fleet: FleetHandle) -> dict[str, str]:
    nodes = get(fleet, "default", "nodes")["items"]
    return {n["metadata"]["name"]: n["metadata"]["labels"].get("nvidia.com/gpu.product", "") for n in nodes}


def owned(fleet: FleetHandle, ns: str, name: str) -> dict[str, list[str]]:
    out = {}
    for kind in ("deployments", "statefulsets", "services", "poddisruptionbudgets"):
        items = get(fleet, ns, kind, selector=f"infleet.dev/deployment={name}")["items"]
        out[kind] = sorted(i["metadata"]["name"] for i in items)
    return out


def test_pods_land_on_the_gpu_type_with_the_gpu_count(
    crds: FleetHandle, namespace: str, operator: OperatorProcess
) -> None:
    spec = good_spec(accelerator={"type": H100}, parallelism={"tensor": 4}, replicas=2)
    recorder = ConditionRecorder(crds, namespace, "h100x4")
    apply(crds, namespace, idep("h100x4", spec))
    body = wait_condition(crds, namespace, "h100x4", "Ready", operator=operator)
    assert conditions(body)["Progressing"]["status"] == "False"
    seen = recorder.stop()
    # (Ready, Progressing): created, progressing while pods start, then ready and done
    assert ("False", "True") in seen and seen[-1] == ("True", "False"), seen
    assert seen.index(("False", "True")) < seen.index(("True", "False")), seen
    assert body["status"]["selector"] == "app.kubernetes.io/name=infleet-runtime,infleet.dev/deployment=h100x4"
    assert body["status"]["readyReplicas"] == 2 and body["status"]["replicas"] == 2
    assert body["status"]["endpoint"] == f"http://h100x4.{namespace}.svc:8000"
    products = node_products(crds)
    running = pods(crds, namespace, "h100x4")
    assert len(running) == 2
    for pod in running:
        assert products[pod["spec"]["nodeName"]] == H100
        assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"
    # kubectl get idep shows the printer columns
    table = crds.kubectl("get", "idep", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "REPLICAS", "TIER", "P99", "TTFT", "COST", "SLO", "MET", "AGE"]
    assert table[1].split()[:4] == ["h100x4", "2", "2", "bf16"]


def test_multi_node_groups_get_ranks(crds: FleetHandle, namespace: str, operator: OperatorProcess) -> None:
    spec = good_spec(accelerator={"type": H100, "gpusPerNode": 8}, parallelism={"tensor": 8, "pipeline": 2}, replicas=2)
    apply(crds, namespace, idep("big", spec))
    body = wait_condition(crds, namespace, "big", "Ready", operator=operator)
    assert body["status"]["podsPerReplica"] == 2 and body["status"]["gpusPerReplica"] == 16
    revision = body["status"]["revision"]
    assert owned(crds, namespace, "big")["statefulsets"] == [f"big-{revision}-g0", f"big-{revision}-g1"]

    def ranked() -> list[dict[str, Any]] | None:
        found = pods(crds, namespace, "big")
        return found if len(found) == 4 and all("infleet.dev/rank" in p["metadata"]["labels"] for p in found) else None

    running = wait_for(ranked, timeout=120, what="4 group pods with rank labels")
    products = node_products(crds)
    seen = set()
    for pod in running:
        labels = pod["metadata"]["labels"]
        group, rank = labels["infleet.dev/group"], labels["infleet.dev/rank"]
        seen.add((group, rank))
        assert products[pod["spec"]["nodeName"]] == H100
        c = pod["spec"]["containers"][0]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["INFLEET_GROUP"] == group and env["INFLEET_WORLD_SIZE"] == "2"
        assert env["INFLEET_LEADER_ADDR"] == f"big-{revision}-g{group}-0.big-group.{namespace}.svc"
        assert pod["metadata"]["name"] == f"big-{revision}-g{group}-{rank}"
    assert seen == {("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")}
    # the two ranks of a group are on different nodes (each takes a whole node's 8 GPUs)
    for group in ("0", "1"):
        nodes = {p["spec"]["nodeName"] for p in running if p["metadata"]["labels"]["infleet.dev/group"] == group}
        assert len(nodes) == 2


def test_kubectl_scale(crds: FleetHandle, namespace: str, operator: OperatorProcess) -> None:
    apply(crds, namespace, idep("scaled", a100_spec()))
    wait_condition(crds, namespace, "scaled", "Ready", operator=operator)
    assert owned(crds, namespace, "scaled")["poddisruptionbudgets"] == []  # one pod: nothing to budget
    crds.kubectl("scale", "-n", namespace, "idep", "scaled", "--replicas=3")

    def three_ready() -> bool:
        body = get(crds, namespace, "inferencedeployment", "scaled")
        st = body.get("status") or {}
        return st.get("readyReplicas") == 3 and conditions(body)["Ready"]["status"] == "True"

    wait_explained(crds, namespace, "scaled", three_ready, 180, "3 ready replicas after kubectl scale", operator)
    assert get(crds, namespace, "deployment", "scaled")["spec"]["replicas"] == 3
    budget = get(crds, namespace, "poddisruptionbudget", "scaled")["spec"]
    assert budget["maxUnavailable"] == 1  # drains take one of the three at a time
    crds.kubectl("scale", "-n", namespace, "idep", "scaled", "--replicas=1")
    wait_for(lambda: len(pods(crds, namespace, "scaled")) == 1, timeout=120, what="scale down to 1 pod")
    wait_for(
        lambda: owned(crds, namespace, "scaled")["poddisruptionbudgets"] == [],
        timeout=60,
        what="the disruption budget deleted at one pod",
    )


def test_drift_is_repaired(crds: FleetHandle, namespace: str, operator: OperatorProcess) -> None:
    apply(crds, namespace, idep("drift", a100_spec(replicas=2)))
    wait_condition(crds, namespace, "drift", "Ready", operator=operator)
    uid = get(crds, namespace, "deployment", "drift")["metadata"]["uid"]

    crds.kubectl("scale", "-n", namespace, "deployment", "drift", "--replicas=5")
    wait_for(
        lambda: get(crds, namespace, "deployment", "drift")["spec"]["replicas"] == 2,
        timeout=90,
        what="replicas edit reverted",
    )
    crds.kubectl("delete", "-n", namespace, "deployment", "drift", "--wait=false")

    def recreated() -> bool:
        dep = get(crds, namespace, "deployment", "drift")
        return bool(dep and dep["metadata"]["uid"] != uid and dep["spec"]["replicas"] == 2)

    wait_for(recreated, timeout=180, what="deleted Deployment recreated")
    crds.kubectl("delete", "-n", namespace, "service", "drift", "--wait=false")
    wait_condition(crds, namespace, "drift", "Ready", operator=operator)
    assert operator.metric("infleet_operator_drift_repairs_total", kind="Deployment") >= 1


def test_tier_change_rolls_out_new_pods_before_old_go(
    crds: FleetHandle, namespace: str, operator: OperatorProcess
) -> None:
    apply(crds, namespace, idep("roll", a100_spec(replicas=3, quantization={"tier": "bf16"})))
    wait_condition(crds, namespace, "roll", "Ready", operator=operator)
    old = {p["metadata"]["name"] for p in pods(crds, namespace, "roll")}
    strategy = get(crds, namespace, "deployment", "roll")["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    recorder = RolloutRecorder(crds, namespace, "roll", new_tier="int8")
    apply(crds, namespace, idep("roll", a100_spec(replicas=3, quantization={"tier": "int8"})))

    def rolled_out() -> bool:
        current = pods(crds, namespace, "roll")
        tiers = [p["metadata"]["labels"]["infleet.dev/tier"] for p in current if ready(p)]
        return tiers == ["int8"] * 3 and len(current) == 3

    wait_for(rolled_out, timeout=180, what="rollout to int8")
    recorder.stop()
    assert not recorder.violations, recorder.violations
    assert recorder.most_pods > 3, "no surge pod was seen: new pods must start before old ones go"
    assert not old & {p["metadata"]["name"] for p in pods(crds, namespace, "roll")}
    body = wait_condition(crds, namespace, "roll", "Progressing", "False", operator=operator)
    assert body["status"]["tier"] == "int8" and body["status"]["readyReplicas"] == 3


def test_restart_during_reconcile_converges_without_duplicates(
    crds: FleetHandle, namespace: str, operator: OperatorProcess
) -> None:
    names = [f"r{i}" for i in range(6)]
    specs = [a100_spec(replicas=1 + i % 2) for i in range(6)]
    specs[5] = good_spec(accelerator={"type": H100}, parallelism={"tensor": 16}, replicas=1)  # a grouped one too
    apply(crds, namespace, *[idep(n, s) for n, s in zip(names, specs, strict=True)])
    time.sleep(0.3)
    operator.kill()  # mid-reconcile: some objects exist, some do not
    operator.start()
    for n in names:
        wait_condition(crds, namespace, n, "Ready", operator=operator, timeout=150)
    first = {n: owned(crds, namespace, n) for n in names}
    for n, s in zip(names[:5], specs, strict=False):
        budget = [n] if s["replicas"] > 1 else []  # none over a single pod
        assert first[n] == {"deployments": [n], "statefulsets": [], "services": [n], "poddisruptionbudgets": budget}
    assert len(first["r5"]["statefulsets"]) == 1 and first["r5"]["deployments"] == []

    def identities() -> dict[str, tuple[str, int]]:
        deps = {n: get(crds, namespace, "deployment", n)["metadata"] for n in names[:5]}
        return {n: (m["uid"], m["generation"]) for n, m in deps.items()}

    versions = identities()
    operator.kill()
    operator.start()
    time.sleep(10)  # the resume handlers have run again
    assert {n: owned(crds, namespace, n) for n in names} == first
    # a clean re-apply changes nothing: same objects (uid) with the same spec (generation)
    assert identities() == versions


def test_delete_removes_everything(crds: FleetHandle, namespace: str, operator: OperatorProcess) -> None:
    spec = good_spec(accelerator={"type": H100}, parallelism={"tensor": 16})
    apply(crds, namespace, idep("gone", spec), idep("kept", a100_spec()))
    wait_condition(crds, namespace, "gone", "Ready", operator=operator)
    wait_condition(crds, namespace, "kept", "Ready", operator=operator)
    assert any(owned(crds, namespace, "gone").values())
    crds.kubectl("delete", "-n", namespace, "idep", "gone", "--timeout=30s")
    empty = {"deployments": [], "statefulsets": [], "services": [], "poddisruptionbudgets": []}
    wait_for(lambda: owned(crds, namespace, "gone") == empty, timeout=120, what="garbage collection of owned objects")
    wait_for(lambda: not pods(crds, namespace, "gone"), timeout=120, what="pods gone")
    assert owned(crds, namespace, "kept")["deployments"] == ["kept"]


def test_operator_health_and_metrics(crds: FleetHandle, namespace: str, operator: OperatorProcess) -> None:
    apply(crds, namespace, idep("m", a100_spec()))
    wait_condition(crds, namespace, "m", "Ready", operator=operator)
    # the counters are read after Ready: the reconcile that led there has been counted by then
    assert operator.metric("infleet_operator_reconcile_total", trigger="create", result="ok") >= 1
    assert operator.metric("infleet_operator_reconcile_duration_seconds_count") >= 1
    assert operator.metric("infleet_operator_api_requests_total", verb="PATCH", kind="Deployment") >= 1
    # one slow answer on a loaded machine is not a failure: /healthz must come back within a minute
    wait_for(operator.healthy, timeout=60, interval=1, what=f"operator /healthz (log: {operator.log_path})")


def test_two_replicas_elect_one_through_peering(crds: FleetHandle, namespace: str, tmp_path: Any) -> None:
    """Two operators: the higher priority works, the other stands by and takes over when the first exits."""
    leader = OperatorProcess(crds.kubeconfig, namespace, tmp_path / "a")
    standby = OperatorProcess(crds.kubeconfig, namespace, tmp_path / "b")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    try:
        leader.start("--peering", "--priority", "200")
        time.sleep(3)  # the leader is up before the standby starts (see __main__: pausing during start-up)
        standby.start("--peering", "--priority", "100")
        wait_for(
            lambda: "Pausing" in standby.log() or "paused" in standby.log().lower(), timeout=120, what="standby pauses"
        )
        apply(crds, namespace, idep("first", a100_spec()))
        wait_condition(crds, namespace, "first", "Ready", operator=leader)
        handled = [
            line for line in standby.metrics().splitlines() if line.startswith("infleet_operator_reconcile_total{")
        ]
        assert not handled, f"the standby reconciled while the leader was alive: {handled}"
        leader.stop()  # a clean exit leaves the peering at once
        apply(crds, namespace, idep("second", a100_spec()))
        wait_condition(crds, namespace, "second", "Ready", operator=standby, timeout=120)
    finally:
        leader.stop()
        standby.stop()
