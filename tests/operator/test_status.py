"""Conditions follow the Kubernetes convention; progress is read off the workload objects."""

from __future__ import annotations

from typing import Any

from infleet.operator import api, checks, resources, status

from .specs import good_spec


def test_transition_time_moves_only_when_status_flips() -> None:
    first = status.merge_conditions([], [status.condition("Ready", False, "Creating", "", 1, now="t1")])
    same = status.merge_conditions(first, [status.condition("Ready", False, "StillCreating", "x", 2, now="t2")])
    assert same[0]["lastTransitionTime"] == "t1" and same[0]["reason"] == "StillCreating"
    assert same[0]["observedGeneration"] == 2
    flipped = status.merge_conditions(same, [status.condition("Ready", True, "ReplicasReady", "", 2, now="t3")])
    assert flipped[0]["lastTransitionTime"] == "t3" and flipped[0]["status"] == "True"


def test_merge_keeps_other_types_and_orders_standard_first() -> None:
    old = [status.condition("MetricsAvailable", True, "Ok", "", 1, now="t0")]
    out = status.merge_conditions(
        old,
        [
            status.condition("Degraded", False, "AsExpected", "", 1, now="t1"),
            status.condition("Ready", True, "ReplicasReady", "", 1, now="t1"),
        ],
    )
    assert [c["type"] for c in out] == ["Ready", "Degraded", "MetricsAvailable"]


def deployment(generation: int, observed: int, replicas: int, updated: int, ready: int) -> dict[str, Any]:
    return {
        "kind": "Deployment",
        "metadata": {"generation": generation},
        "status": {
            "observedGeneration": observed,
            "replicas": replicas,
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": ready,
        },
    }


def kinds(conds: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in conds}


def test_progressing_then_ready() -> None:
    creating = status.deployment_progress(deployment(1, 1, 2, 2, 0), desired=2)
    assert kinds(status.replica_conditions(creating, 1)) == {
        "Ready": ("False", "ReplicasNotReady"),
        "Progressing": ("True", "Creating"),
    }
    done = status.deployment_progress(deployment(1, 1, 2, 2, 2), desired=2)
    assert done.complete
    assert kinds(status.replica_conditions(done, 1)) == {
        "Ready": ("True", "ReplicasReady"),
        "Progressing": ("False", "RolloutComplete"),
    }


def test_rollout_keeps_ready_while_new_pods_start() -> None:
    # 2 old pods ready, 1 surge pod of the new template not ready yet
    rolling = status.deployment_progress(deployment(2, 2, 3, 1, 2), desired=2)
    assert rolling.updated_ready == 0 and rolling.ready == 2 and not rolling.complete
    assert kinds(status.replica_conditions(rolling, 2)) == {
        "Ready": ("True", "ReplicasReady"),
        "Progressing": ("True", "RollingOut"),
    }


def test_unseen_generation_is_not_complete() -> None:
    stale = status.deployment_progress(deployment(3, 2, 2, 2, 2), desired=2)
    assert not stale.complete


def sts(name: str, revision: str, replicas: int, ready: int) -> dict[str, Any]:
    return {
        "kind": "StatefulSet",
        "metadata": {"name": name, "generation": 1, "labels": {resources.LABEL_REVISION: revision}},
        "spec": {"replicas": replicas},
        "status": {"observedGeneration": 1, "readyReplicas": ready},
    }


def test_group_is_ready_only_with_every_rank() -> None:
    groups = [sts("a-r1-g0", "r1", 2, 2), sts("a-r1-g1", "r1", 2, 1), sts("a-r0-g0", "r0", 2, 2)]
    p = status.groups_progress(groups, "r1", desired=2)
    assert (p.current, p.updated, p.ready, p.updated_ready) == (3, 2, 2, 1)
    assert not p.complete


def test_scaled_to_zero_is_ready() -> None:
    p = status.Progress(0, 0, 0, 0, 0)
    assert kinds(status.replica_conditions(p, 1))["Ready"] == ("True", "ScaledToZero")


def spec_of(**overrides: Any) -> api.InferenceDeploymentSpec:
    return api.InferenceDeploymentSpec.model_validate(good_spec(**overrides))


def test_slo_condition() -> None:
    spec = spec_of(slo={"ttftP99": "2s", "tpotP99": "100ms"})
    assert status.slo_condition(spec_of(), None, 1)["reason"] == "NoTargets"
    assert status.slo_condition(spec, None, 1)["reason"] == "NoObservations"
    met = status.slo_condition(spec, {"ttftP99Seconds": 1.2, "tpotP99Seconds": 0.05}, 1)
    assert (met["status"], met["reason"]) == ("True", "TargetsMet")
    missed = status.slo_condition(spec, {"ttftP99Seconds": 2.5, "tpotP99Seconds": 0.05}, 1)
    assert missed["status"] == "False" and "TTFT p99" in missed["message"]


def test_degraded_names_the_first_reason() -> None:
    cond = status.degraded_condition([("NoMatchingNodes", "no node"), ("ModelVolumeNotFound", "no pvc")], 3)
    assert (cond["status"], cond["reason"], cond["observedGeneration"]) == ("True", "NoMatchingNodes", 3)
    assert "no node" in cond["message"] and "no pvc" in cond["message"]
    assert status.degraded_condition([], 3)["status"] == "False"


FLEET = {"NVIDIA-H100-80GB-HBM3": 8, "NVIDIA-A100-SXM4-80GB": 8, "NVIDIA-L4": 1}


def judge(
    spec: api.InferenceDeploymentSpec, tier: str | None = None, missing: tuple[str, str] | None = None
) -> list[str]:
    chosen = tier or checks.choose_tier(spec, None)[0]
    lay = resources.layout(spec, checks.gpus_per_node(spec, FLEET))
    return [r for r, _ in checks.problems(spec, chosen, lay, FLEET, missing)]


def test_checks_find_what_only_the_operator_can_judge() -> None:
    assert judge(spec_of()) == []
    assert judge(spec_of(accelerator={"type": "NVIDIA-B200"})) == ["NoMatchingNodes"]
    wide = spec_of(accelerator={"type": "NVIDIA-H100-80GB-HBM3", "gpusPerNode": 16}, parallelism={"tensor": 16})
    assert judge(wide) == ["InsufficientGPUsPerNode"]
    assert judge(spec_of(model={"uri": "pvc://gone/x"}), missing=("model.uri", "gone")) == ["ModelVolumeNotFound"]
    cached = spec_of(model={"uri": "hf://a/b", "cache": {"claimName": "models"}})
    assert checks.claims(cached) == [("model.cache.claimName", "models")]
    assert checks.claims(spec_of(model={"uri": "pvc://weights/x"})) == [("model.uri", "weights")]
    a100 = spec_of(accelerator={"type": "NVIDIA-A100-SXM4-80GB"}, quantization={"tier": "fp8"})
    assert judge(a100) == ["TierUnsupportedByAccelerator"]
    vllm = spec_of(runtime={"engine": "vllm"}, quantization={"tier": "int8"})
    assert judge(vllm) == ["TierUnsupportedByEngine"]
    multi = spec_of(
        runtime={"engine": "vllm"}, accelerator={"type": "NVIDIA-H100-80GB-HBM3"}, parallelism={"tensor": 16}
    )
    assert judge(multi) == ["MultiNodeUnsupportedByEngine"]
    # two single-GPU L4 nodes per replica is a valid group
    assert judge(spec_of(parallelism={"tensor": 2})) == []


def test_auto_tier_skips_what_cannot_run() -> None:
    a100 = spec_of(accelerator={"type": "NVIDIA-A100-SXM4-80GB"}, quantization={"allowed": ["fp8", "int8"]})
    assert checks.choose_tier(a100, None)[0] == "int8"
    assert checks.choose_tier(a100, "fp8")[0] == "int8"  # a stale choice that cannot run is replaced
    h100 = spec_of(accelerator={"type": "NVIDIA-H100-80GB-HBM3"}, quantization={"allowed": ["fp8", "int8"]})
    assert checks.choose_tier(h100, "int8")[0] == "int8"  # the autoscaler's choice stays
    assert checks.supports_fp8("NVIDIA-L4") and not checks.supports_fp8("Tesla-T4")


def test_a_group_restarts_when_a_rank_crashes() -> None:
    from infleet.operator import handlers

    pod = {
        "metadata": {"ownerReferences": [{"kind": "StatefulSet", "name": "big-abc-g0", "controller": True}]},
        "status": {"containerStatuses": [{"restartCount": 2}]},
    }
    assert handlers.group_of(pod) == "big-abc-g0"
    assert handlers.crashed(pod, 1) and not handlers.crashed(pod, 2)
    assert not handlers.crashed(pod, None)  # first sighting (e.g. after an operator restart) is not a crash
