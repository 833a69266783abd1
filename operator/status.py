"""Status: conditions in Kubernetes' convention, and the replica counts read off the workload objects.

`lastTransitionTime` moves only when a condition's status flips, so `kubectl wait --for=condition=Ready` and
dashboards see real transitions, not every reconcile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from infleet.api.conditions import Condition
from infleet.api.durations import seconds
from infleet.operator.api import InferenceDeploymentSpec

READY, PROGRESSING, DEGRADED, SLO_MET, MODEL_READY = "Ready", "Progressing", "Degraded", "SLOMet", "ModelReady"
LEADER_WORKER_SET = "LeaderWorkerSet"  # grouped deployments: do LeaderWorkerSets run the groups (docs/multi-node.md)
CONDITION_TYPES = (READY, PROGRESSING, DEGRADED, MODEL_READY, SLO_MET, LEADER_WORKER_SET)


def condition(
    type_: str, status: bool | None, reason: str, message: str, generation: int | None, now: str | None = None
) -> dict[str, Any]:
    """One condition as the wire carries it, built (and so validated) by the shared Condition model."""
    made = Condition.of(type_, status, reason, message, generation)
    return made.model_copy(update={"last_transition_time": now}).wire() if now else made.wire()


def merge_conditions(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """New conditions replace old ones of the same type, keeping the old lastTransitionTime when status is equal;
    types not mentioned in `new` stay as they were. Output order: the standard types first, then the rest."""
    by_type = {c["type"]: dict(c) for c in old}
    for cond in new:
        previous = by_type.get(cond["type"])
        cond = dict(cond)
        if previous and previous.get("status") == cond["status"] and previous.get("lastTransitionTime"):
            cond["lastTransitionTime"] = previous["lastTransitionTime"]
        by_type[cond["type"]] = cond
    order = {t: i for i, t in enumerate(CONDITION_TYPES)}
    return sorted(by_type.values(), key=lambda c: (order.get(c["type"], len(order)), c["type"]))


def find(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def is_true(conditions: list[dict[str, Any]], type_: str) -> bool:
    cond = find(conditions, type_)
    return bool(cond and cond.get("status") == "True")


# ---- progress of the workload -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """Replicas (single pods or whole groups) as the workload controllers report them."""

    desired: int
    current: int  # replicas of any revision that exist now
    updated: int  # replicas already on the current revision
    ready: int  # ready replicas (any revision: they all serve)
    updated_ready: int  # ready replicas on the current revision

    @property
    def complete(self) -> bool:
        return self.updated_ready >= self.desired and self.current == self.desired


def deployment_progress(obj: dict[str, Any], desired: int) -> Progress:
    """Read a Deployment; its status counts only when the controller has seen the latest spec."""
    status = obj.get("status") or {}
    seen = status.get("observedGeneration", 0) >= obj.get("metadata", {}).get("generation", 0)
    if not seen:
        return Progress(desired, status.get("replicas", 0), 0, status.get("readyReplicas", 0), 0)
    updated = status.get("updatedReplicas", 0)
    ready = status.get("readyReplicas", 0)
    # readyReplicas counts old and new pods alike: assume every old pod still counted is one of the ready ones
    old_left = max(0, status.get("replicas", 0) - updated)
    updated_ready = max(0, min(updated, ready - old_left))
    return Progress(desired, status.get("replicas", 0), updated, ready, updated_ready)


def group_ready(sts: dict[str, Any]) -> bool:
    """A group serves only when every rank is ready on the StatefulSet's latest spec."""
    spec_replicas = sts.get("spec", {}).get("replicas", 0)
    status = sts.get("status") or {}
    seen = status.get("observedGeneration", 0) >= sts.get("metadata", {}).get("generation", 0)
    return bool(seen and spec_replicas > 0 and status.get("readyReplicas", 0) >= spec_replicas)


def groups_progress(groups: list[dict[str, Any]], revision: str, desired: int) -> Progress:
    from infleet.operator.resources import LABEL_REVISION

    current = [g for g in groups if g["metadata"].get("labels", {}).get(LABEL_REVISION) == revision]
    return Progress(
        desired=desired,
        current=len(groups),
        updated=len(current),
        ready=sum(group_ready(g) for g in groups),
        updated_ready=sum(group_ready(g) for g in current),
    )


def leaderworkerset_progress(lws: dict[str, Any], desired: int) -> Progress:
    """Read a LeaderWorkerSet: its counts are whole groups (a group is ready when every pod of it is). LWS keeps no
    observedGeneration, so its own `Available` condition says whether every group is ready on the latest spec."""
    status = lws.get("status") or {}
    available = any(c.get("type") == "Available" and c.get("status") == "True" for c in status.get("conditions") or [])
    current, updated = status.get("replicas", 0), status.get("updatedReplicas", 0)
    ready = status.get("readyReplicas", 0)
    updated_ready = min(updated, ready) if available else min(updated, ready, max(0, desired - 1))
    return Progress(desired, current, updated, ready, updated_ready)


def replica_conditions(progress: Progress, generation: int | None) -> list[dict[str, Any]]:
    """Ready and Progressing from the workload's counts."""
    p = progress
    if p.desired == 0:
        return [
            condition(READY, True, "ScaledToZero", "no replicas wanted; the gateway holds requests", generation),
            condition(PROGRESSING, p.current > 0, "ScalingDown" if p.current else "Idle", "", generation),
        ]
    if p.complete:
        return [
            condition(READY, True, "ReplicasReady", f"{p.ready}/{p.desired} replicas ready", generation),
            condition(
                PROGRESSING, False, "RolloutComplete", f"{p.updated_ready} replicas on the latest spec", generation
            ),
        ]
    ready = p.ready >= p.desired
    if p.updated < p.desired or p.updated_ready < p.updated:
        reason = "RollingOut" if p.ready else "Creating"
    else:
        reason = "ScalingDown"
    message = f"{p.updated_ready}/{p.desired} replicas ready on the latest spec, {p.ready} ready in all"
    return [
        condition(
            READY,
            ready,
            "ReplicasReady" if ready else "ReplicasNotReady",
            f"{p.ready}/{p.desired} replicas ready",
            generation,
        ),
        condition(PROGRESSING, True, reason, message, generation),
    ]


def degraded_condition(problems: list[tuple[str, str]], generation: int | None) -> dict[str, Any]:
    """Degraded from the operator's own checks: (reason, message) pairs, the first one names the condition."""
    if not problems:
        return condition(DEGRADED, False, "AsExpected", "", generation)
    reason = problems[0][0]
    message = "; ".join(msg for _, msg in problems)
    return condition(DEGRADED, True, reason, message, generation)


def slo_condition(
    spec: InferenceDeploymentSpec, observed: dict[str, Any] | None, generation: int | None
) -> dict[str, Any]:
    """SLOMet compares the autoscaler's observed p99s (status.observed) with the spec's targets."""
    targets = {
        "ttftP99Seconds": ("TTFT p99", spec.slo.ttft_p99),
        "tpotP99Seconds": ("TPOT p99", spec.slo.tpot_p99),
        "e2eP99Seconds": ("end-to-end p99", spec.slo.e2e_p99),
    }
    targets = {k: v for k, v in targets.items() if v[1]}
    if not targets:
        return condition(SLO_MET, None, "NoTargets", "spec.slo sets no latency targets", generation)
    seen = {k: observed.get(k) for k in targets} if observed else {}
    if not seen or all(v is None for v in seen.values()):
        return condition(SLO_MET, None, "NoObservations", "no latency observed yet", generation)
    missed = []
    for key, (label, target) in targets.items():
        value = seen.get(key)
        if value is not None and target is not None and value > seconds(target):
            missed.append(f"{label} {value:.3g}s > {target}")
    if missed:
        return condition(SLO_MET, False, "TargetMissed", ", ".join(missed), generation)
    return condition(SLO_MET, True, "TargetsMet", "observed p99s within spec.slo", generation)
