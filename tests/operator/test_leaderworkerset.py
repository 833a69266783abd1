"""Multi-node groups as one LeaderWorkerSet: the object, its progress, and the condition saying which workload runs
the groups. Pure functions; tests/operator/test_leaderworkerset_cluster.py runs them against the real controller."""

from __future__ import annotations

from typing import Any

from infleet.operator import api, lws, reconcile, resources, status
from infleet.operator.resources import Owner

from .specs import good_spec

OWNER = Owner("llama", "serving", "uid-1")
H100 = "NVIDIA-H100-80GB-HBM3"


def grouped_spec(replicas: int = 3) -> api.InferenceDeploymentSpec:
    spec = good_spec(accelerator={"type": H100, "gpusPerNode": 8}, parallelism={"tensor": 8, "pipeline": 2})
    return api.InferenceDeploymentSpec.model_validate({**spec, "replicas": replicas})


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def test_groups_are_one_leaderworkerset_of_group_size() -> None:
    want = resources.desired(grouped_spec(replicas=3), OWNER, "fp8", 8, lws=True)
    assert [o["kind"] for o in want.workloads] == ["LeaderWorkerSet"] and want.leaderworkerset
    (sets,) = want.workloads
    assert sets["apiVersion"] == "leaderworkerset.x-k8s.io/v1" and sets["metadata"]["name"] == "llama"
    assert sets["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "infleet"
    assert sets["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    spec = sets["spec"]
    assert spec["replicas"] == 3  # groups
    template = spec["leaderWorkerTemplate"]
    assert template["size"] == 2 and template["restartPolicy"] == "RecreateGroupOnPodRestart"
    assert spec["rolloutStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdateConfiguration": {"maxUnavailable": 1, "maxSurge": 1},
    }
    assert sets["metadata"]["annotations"][resources.TEMPLATE_HASH_ANNOTATION] == want.revision
    for role in ("leader", "worker"):
        pod = template[f"{role}Template"]
        assert pod["metadata"]["labels"]["infleet.dev/role"] == role
        c = pod["spec"]["containers"][0]
        env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
        worker_index = "metadata.labels['leaderworkerset.sigs.k8s.io/worker-index']"
        assert env["INFLEET_RANK"] == {"fieldRef": {"fieldPath": worker_index}}
        group_index = "metadata.labels['leaderworkerset.sigs.k8s.io/group-index']"
        assert env["INFLEET_GROUP"] == {"fieldRef": {"fieldPath": group_index}}
        assert env["INFLEET_WORLD_SIZE"] == "2" and env["INFLEET_LEADER_ADDR"] == "$(LWS_LEADER_ADDRESS)"
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
    # no StatefulSets and no headless Service of ours: LWS makes both; the endpoint selects the leaders
    assert not by_kind(want.objects, "StatefulSet")
    (endpoint,) = by_kind(want.objects, "Service")
    assert endpoint["spec"]["selector"]["leaderworkerset.sigs.k8s.io/worker-index"] == "0"
    assert "apps.kubernetes.io/pod-index" not in endpoint["spec"]["selector"]


def test_without_the_crd_groups_stay_statefulsets_and_single_pods_stay_deployments() -> None:
    fallback = resources.desired(grouped_spec(replicas=2), OWNER, "fp8", 8, lws=False)
    assert [o["kind"] for o in fallback.workloads] == ["StatefulSet", "StatefulSet"] and not fallback.leaderworkerset
    single = api.InferenceDeploymentSpec.model_validate(good_spec())
    assert [o["kind"] for o in resources.desired(single, OWNER, "bf16", 1, lws=True).workloads] == ["Deployment"]


def test_the_revision_follows_the_template_not_the_group_count() -> None:
    a = resources.desired(grouped_spec(replicas=1), OWNER, "fp8", 8, lws=True).revision
    assert resources.desired(grouped_spec(replicas=4), OWNER, "fp8", 8, lws=True).revision == a
    assert resources.desired(grouped_spec(replicas=1), OWNER, "bf16", 8, lws=True).revision != a


def lws_with(replicas: int, updated: int, ready: int, available: bool) -> dict[str, Any]:
    cond = {"type": "Available" if available else "Progressing", "status": "True"}
    st = {"replicas": replicas, "updatedReplicas": updated, "readyReplicas": ready, "conditions": [cond]}
    return {"kind": "LeaderWorkerSet", "metadata": {"name": "llama"}, "status": st}


def test_progress_counts_whole_groups_and_trusts_only_available() -> None:
    done = status.leaderworkerset_progress(lws_with(3, 3, 3, available=True), desired=3)
    assert done.complete and done.ready == 3
    # every count says done, but LWS has not yet judged the latest spec: not complete
    stale = status.leaderworkerset_progress(lws_with(3, 3, 3, available=False), desired=3)
    assert not stale.complete and stale.ready == 3
    rolling = status.leaderworkerset_progress(lws_with(4, 1, 3, available=False), desired=3)
    assert (rolling.current, rolling.updated, rolling.updated_ready, rolling.complete) == (4, 1, 1, False)
    assert status.leaderworkerset_progress({"kind": "LeaderWorkerSet", "metadata": {}}, 2).ready == 0


def judged(lws_installed: bool, spec: api.InferenceDeploymentSpec) -> dict[str, Any]:
    want = resources.desired(spec, OWNER, "fp8", 8, lws=lws_installed)
    return reconcile.judged_status(spec, OWNER, 1, {}, want, [], "")


def test_the_condition_says_which_workload_runs_the_groups() -> None:
    on = judged(True, grouped_spec())
    cond = status.find(on["conditions"], status.LEADER_WORKER_SET)
    assert cond and (cond["status"], cond["reason"]) == ("True", "LeaderWorkerSetAvailable")
    assert on["workload"] == "LeaderWorkerSet/llama"
    off = judged(False, grouped_spec())
    cond = status.find(off["conditions"], status.LEADER_WORKER_SET)
    assert cond and (cond["status"], cond["reason"]) == ("False", "LeaderWorkerSetUnavailable")
    assert resources.LWS_CRD in cond["message"] and off["workload"].startswith("StatefulSet/llama-")
    single = judged(True, api.InferenceDeploymentSpec.model_validate(good_spec()))
    assert status.find(single["conditions"], status.LEADER_WORKER_SET) is None
    # the status model (the CRD's source) accepts it
    api.InferenceDeploymentStatus.patch(off)


def test_a_crd_counts_once_established_and_not_while_being_deleted() -> None:
    established = {
        "metadata": {"name": resources.LWS_CRD},
        "status": {"conditions": [{"type": "Established", "status": "True"}]},
    }
    assert lws.usable(established)
    assert not lws.usable({**established, "metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}})
    assert not lws.usable({"metadata": {}, "status": {"conditions": [{"type": "NamesAccepted", "status": "True"}]}})


def test_statefulset_groups_being_replaced_still_count_as_ready() -> None:
    """Installing LWS under running StatefulSet groups: until the LeaderWorkerSet is ready, they serve."""
    spec = grouped_spec(replicas=1)
    want = resources.desired(spec, OWNER, "fp8", 8, lws=True)
    old_group = {
        "kind": "StatefulSet",
        "metadata": {"name": "llama-abc-g0", "generation": 1, "labels": {"infleet.dev/revision": "abc"}},
        "spec": {"replicas": 2},
        "status": {"observedGeneration": 1, "readyReplicas": 2},
    }
    starting = lws_with(1, 1, 0, available=False)
    moving = reconcile.workload_status(spec, OWNER, 1, {}, want, [starting, old_group])
    ready = status.find(moving["conditions"], status.READY)
    progressing = status.find(moving["conditions"], status.PROGRESSING)
    assert ready and ready["status"] == "True" and progressing and progressing["status"] == "True"
    assert (moving["replicas"], moving["readyReplicas"]) == (2, 1)
    done = reconcile.workload_status(spec, OWNER, 1, {}, want, [lws_with(1, 1, 1, available=True)])
    progressing = status.find(done["conditions"], status.PROGRESSING)
    assert progressing and (progressing["status"], progressing["reason"]) == ("False", "RolloutComplete")
