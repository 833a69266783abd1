"""Multi-node groups as LeaderWorkerSets on the local fleet with the real LWS controller and its webhooks
(cluster/lws.py): a group is one LWS group, a failed worker takes its whole group down and back, scaling adds
whole groups, and removing LWS falls back to StatefulSets with a condition. Pods use a non-infleet image, so KWOK
runs (fakes) them and marks them Ready. `make test-lws` (the controller is a long Go build, once)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from infleet.cluster import build, lws
from infleet.cluster.testing import FleetHandle, wait_for

from .conftest import (
    ConditionRecorder,
    OperatorProcess,
    apply,
    conditions,
    get,
    idep,
    wait_condition,
    wait_explained,
)
from .specs import good_spec

pytestmark = [pytest.mark.cluster, pytest.mark.lws]

H100 = "NVIDIA-H100-80GB-HBM3"
LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
WORKER_INDEX = "leaderworkerset.sigs.k8s.io/worker-index"
GROUP_INDEX = "leaderworkerset.sigs.k8s.io/group-index"


@pytest.fixture(scope="module")
def with_lws(crds: FleetHandle) -> Iterator[FleetHandle]:
    """LWS on the session's fleet for this module only; taken away again after (its CRD too). Module-scoped, so
    it is there before each test's operator starts."""
    build.build_lws()
    lws.enable(crds.fleet)
    try:
        yield crds
    finally:
        lws.disable(crds.fleet)


def two_node_groups(replicas: int) -> dict[str, Any]:
    """16 GPUs a replica on 8-GPU nodes: a group of 2 pods, one a node."""
    return good_spec(
        accelerator={"type": H100, "gpusPerNode": 8}, parallelism={"tensor": 8, "pipeline": 2}, replicas=replicas
    )


def group_pods(fleet: FleetHandle, ns: str, name: str) -> list[dict[str, Any]]:
    items = get(fleet, ns, "pods", selector=f"infleet.dev/deployment={name}")["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def ready(pod: dict[str, Any]) -> bool:
    conds = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


def by_group(pods: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """group index -> worker index -> pod."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for p in pods:
        labels = p["metadata"]["labels"]
        out.setdefault(labels[GROUP_INDEX], {})[labels[WORKER_INDEX]] = p
    return out


def whole_groups_ready(
    fleet: FleetHandle, ns: str, name: str, groups: int
) -> dict[str, dict[str, dict[str, Any]]] | None:
    pods = group_pods(fleet, ns, name)
    found = by_group(pods)
    complete = len(pods) == 2 * groups and all(len(g) == 2 for g in found.values()) and all(map(ready, pods))
    return found if complete and len(found) == groups else None


def owned_statefulsets(fleet: FleetHandle, ns: str, name: str) -> list[str]:
    items = get(fleet, ns, "statefulsets", selector=f"infleet.dev/deployment={name}")["items"]
    return sorted(i["metadata"]["name"] for i in items)


def test_a_two_node_group_is_one_leaderworkerset_and_scaling_adds_whole_groups(
    with_lws: FleetHandle, namespace: str, operator: OperatorProcess
) -> None:
    fleet = with_lws
    apply(fleet, namespace, idep("big", two_node_groups(replicas=1)))
    body = wait_condition(fleet, namespace, "big", "Ready", operator=operator)
    cond = conditions(body)["LeaderWorkerSet"]
    assert (cond["status"], cond["reason"]) == ("True", "LeaderWorkerSetAvailable")
    assert body["status"]["workload"] == "LeaderWorkerSet/big" and body["status"]["podsPerReplica"] == 2
    sets = get(fleet, namespace, "leaderworkersets", selector="infleet.dev/deployment=big")["items"]
    assert [s["metadata"]["name"] for s in sets] == ["big"]
    template = sets[0]["spec"]["leaderWorkerTemplate"]
    assert template["size"] == 2 and template["restartPolicy"] == "RecreateGroupOnPodRestart"
    assert sets[0]["spec"]["replicas"] == 1
    assert owned_statefulsets(fleet, namespace, "big") == []  # LWS's own StatefulSets are not ours

    groups = wait_for(lambda: whole_groups_ready(fleet, namespace, "big", 1), timeout=180, what="one ready group")
    leader, worker = groups["0"]["0"], groups["0"]["1"]
    assert leader["spec"]["nodeName"] != worker["spec"]["nodeName"]  # a node each: 8 GPUs a pod
    for pod, rank in ((leader, "0"), (worker, "1")):
        c = pod["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in c["env"]}
        # LWS's pod webhook (served through the fleet's certificate) gave the pod its address variables
        assert env["LWS_LEADER_ADDRESS"] == f"big-0.big.{namespace}" and env["LWS_GROUP_SIZE"] == "2"
        assert env["LWS_WORKER_INDEX"] == rank
        assert env["INFLEET_LEADER_ADDR"] == "$(LWS_LEADER_ADDRESS)" and env["INFLEET_WORLD_SIZE"] == "2"
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"

    def ranked() -> bool:
        pods = group_pods(fleet, namespace, "big")
        return all(
            p["metadata"]["labels"].get("infleet.dev/rank") == p["metadata"]["labels"][WORKER_INDEX] for p in pods
        )

    wait_for(ranked, timeout=60, what="infleet.dev/rank labels on the group's pods")
    # the endpoint serves through the leaders only
    service = get(fleet, namespace, "service", "big")
    assert service["spec"]["selector"][WORKER_INDEX] == "0"

    fleet.kubectl("scale", "-n", namespace, "idep", "big", "--replicas=2")

    def two_ready() -> bool:
        st = (get(fleet, namespace, "inferencedeployment", "big") or {}).get("status") or {}
        return st.get("readyReplicas") == 2 and st.get("replicas") == 2

    wait_explained(fleet, namespace, "big", two_ready, 180, "2 ready groups after kubectl scale", operator)
    groups = wait_for(lambda: whole_groups_ready(fleet, namespace, "big", 2), timeout=120, what="two whole groups")
    assert sorted(groups) == ["0", "1"] and all(sorted(g) == ["0", "1"] for g in groups.values())
    assert get(fleet, namespace, "leaderworkerset", "big")["spec"]["replicas"] == 2
    assert groups["0"]["0"]["metadata"]["uid"] == leader["metadata"]["uid"]  # the first group was left alone


def test_killing_one_worker_restarts_its_whole_group(
    with_lws: FleetHandle, namespace: str, operator: OperatorProcess
) -> None:
    fleet = with_lws
    apply(fleet, namespace, idep("grp", two_node_groups(replicas=2)))
    wait_condition(fleet, namespace, "grp", "Ready", operator=operator)
    before = wait_for(lambda: whole_groups_ready(fleet, namespace, "grp", 2), timeout=180, what="two ready groups")
    uids = {(g, w): p["metadata"]["uid"] for g, ws in before.items() for w, p in ws.items()}
    fleet.kubectl("delete", "pod", "-n", namespace, before["1"]["1"]["metadata"]["name"], "--wait=false")

    def group_recreated() -> dict[str, dict[str, dict[str, Any]]] | None:
        now = whole_groups_ready(fleet, namespace, "grp", 2)
        if not now or now["1"]["0"]["metadata"]["uid"] == uids[("1", "0")]:
            return None
        return now

    after = wait_explained(fleet, namespace, "grp", group_recreated, 180, "group 1 recreated as a whole", operator)
    # the leader of the worker's group was replaced too (LWS: RecreateGroupOnPodRestart), the other group untouched
    assert after["1"]["0"]["metadata"]["uid"] != uids[("1", "0")]
    assert after["1"]["1"]["metadata"]["uid"] != uids[("1", "1")]
    assert after["0"]["0"]["metadata"]["uid"] == uids[("0", "0")]
    assert after["0"]["1"]["metadata"]["uid"] == uids[("0", "1")]
    wait_condition(fleet, namespace, "grp", "Ready", operator=operator)


def test_removing_lws_falls_back_to_statefulsets_with_a_condition(
    with_lws: FleetHandle, namespace: str, operator: OperatorProcess
) -> None:
    """It takes LWS away; the next test brings it back."""
    fleet = with_lws
    apply(fleet, namespace, idep("fb", two_node_groups(replicas=1)))
    wait_condition(fleet, namespace, "fb", "Ready", operator=operator)
    assert get(fleet, namespace, "leaderworkerset", "fb") is not None
    lws.disable(fleet.fleet)  # the CRD goes, and every LeaderWorkerSet with it
    body = wait_condition(
        fleet,
        namespace,
        "fb",
        "LeaderWorkerSet",
        status="False",
        reason="LeaderWorkerSetUnavailable",
        operator=operator,
    )
    assert "not installed" in conditions(body)["LeaderWorkerSet"]["message"]
    body = wait_condition(fleet, namespace, "fb", "Ready", operator=operator)
    revision = body["status"]["revision"]
    assert body["status"]["workload"] == f"StatefulSet/fb-{revision}-g0..0"
    assert owned_statefulsets(fleet, namespace, "fb") == [f"fb-{revision}-g0"]
    pods = wait_for(
        lambda: (found := group_pods(fleet, namespace, "fb")) and len(found) == 2 and all(map(ready, found)) and found,
        timeout=180,
        what="the group's two pods from its StatefulSet",
    )
    assert all(LWS_NAME_LABEL not in p["metadata"]["labels"] for p in pods)


def test_installing_lws_moves_running_groups_without_an_outage(
    with_lws: FleetHandle, namespace: str, operator: OperatorProcess
) -> None:
    """After the fallback test LWS is gone: groups start as StatefulSets, then LWS is installed under them."""
    fleet = with_lws
    apply(fleet, namespace, idep("mv", two_node_groups(replicas=1)))
    body = wait_condition(fleet, namespace, "mv", "LeaderWorkerSet", status="False", operator=operator)
    body = wait_condition(fleet, namespace, "mv", "Ready", operator=operator)
    old_sets = owned_statefulsets(fleet, namespace, "mv")
    assert old_sets == [f"mv-{body['status']['revision']}-g0"]
    recorder = ConditionRecorder(fleet, namespace, "mv")
    lws.enable(fleet.fleet)
    body = wait_condition(
        fleet, namespace, "mv", "LeaderWorkerSet", reason="LeaderWorkerSetAvailable", operator=operator
    )
    wait_explained(
        fleet,
        namespace,
        "mv",
        lambda: owned_statefulsets(fleet, namespace, "mv") == [],
        180,
        "the StatefulSet group deleted once the LeaderWorkerSet is ready",
        operator,
    )
    body = wait_condition(fleet, namespace, "mv", "Ready", operator=operator)
    assert body["status"]["workload"] == "LeaderWorkerSet/mv"
    wait_for(lambda: whole_groups_ready(fleet, namespace, "mv", 1), timeout=120, what="the LWS group ready")
    seen = recorder.stop()
    assert all(ready == "True" for ready, _ in seen), f"Ready went False while moving the groups: {seen}"
