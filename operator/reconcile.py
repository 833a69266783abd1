"""One reconcile: read the spec, judge it, apply the desired objects, remove what is no longer wanted, and
compute the status. The kopf handlers (handlers.py) only decide *when* this runs.

Apply is server-side apply of whole objects, so running this twice, or after a crash halfway, converges on the
same objects and never duplicates one. Grouped workloads keep the previous revision's groups until every group of
the new revision is ready (surge), then delete them; extra groups after a scale-down go at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from infleet.operator import checks, metrics, resources, status
from infleet.operator.api import InferenceDeploymentSpec
from infleet.operator.kube import Kube
from infleet.operator.resources import LABEL_DEPLOYMENT, LABEL_MANAGED_BY, LABEL_REVISION, MANAGED_BY, Owner


def owner_of(body: Mapping[str, Any]) -> Owner:
    meta = body["metadata"]
    return Owner(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])


def owned_selector(owner: Owner) -> str:
    return f"{LABEL_DEPLOYMENT}={owner.name},{LABEL_MANAGED_BY}={MANAGED_BY}"


@dataclass
class Outcome:
    status: dict[str, Any]  # the judged part of status (status_writer.PARTS)
    new_problems: list[checks.Problem] = field(default_factory=list)  # to announce as Warning events
    applied: list[dict[str, Any]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    replicas: dict[str, Any] = field(default_factory=dict)  # the replica part, from the workloads as applied
    workloads: list[dict[str, Any]] = field(default_factory=list)


def node_gpus_from(index: Mapping[str, Any]) -> dict[str, int]:
    """GPU product -> the largest allocatable GPU count among its nodes (from the kopf node index)."""
    return {product: max(counts) for product, counts in index.items() if product and list(counts)}


def _workload_progress(
    lay: resources.Layout, revision: str, desired: int, workloads: list[dict[str, Any]], lws: bool = False
) -> status.Progress:
    if lws:
        sets = [w for w in workloads if w["kind"] == "LeaderWorkerSet"]
        p = status.leaderworkerset_progress(sets[0], desired) if sets else status.Progress(desired, 0, 0, 0, 0)
        # StatefulSet groups the LeaderWorkerSet replaces serve until it is ready, then go
        old = [w for w in workloads if w["kind"] == "StatefulSet"]
        ready_old = sum(status.group_ready(s) for s in old)
        return status.Progress(desired, p.current + len(old), p.updated, p.ready + ready_old, p.updated_ready)
    if not lay.grouped:
        deps = [w for w in workloads if w["kind"] == "Deployment"]
        if not deps:
            return status.Progress(desired, 0, 0, 0, 0)
        return status.deployment_progress(deps[0], desired)
    return status.groups_progress([w for w in workloads if w["kind"] == "StatefulSet"], revision, desired)


def workload_status(
    spec: InferenceDeploymentSpec,
    owner: Owner,
    generation: int | None,
    old_status: Mapping[str, Any],
    want: resources.Desired,
    workloads: list[dict[str, Any]],
) -> dict[str, Any]:
    """What the workload objects say: replica counts, Ready and Progressing (from the reconcile's applies, then from
    workload events; status_writer keeps an older event from undoing a newer apply)."""
    desired = resources.desired_replicas(spec)
    progress = _workload_progress(want.layout, want.revision, desired, workloads, want.leaderworkerset)
    conditions = status.replica_conditions(progress, generation)
    return {
        "replicas": progress.current,
        "readyReplicas": progress.ready,
        "updatedReplicas": progress.updated,
        "selector": resources.selector_string(owner),
        "conditions": _keep_transition_times(list(old_status.get("conditions") or []), conditions),
    }


def judged_status(
    spec: InferenceDeploymentSpec,
    owner: Owner,
    generation: int | None,
    old_status: Mapping[str, Any],
    want: resources.Desired,
    problems: list[checks.Problem],
    tier_reason: str,
) -> dict[str, Any]:
    """What a reconcile decides: the layout, tier, endpoint and Degraded (SLOMet is the observation loop's)."""
    desired = resources.desired_replicas(spec)
    conditions = [status.degraded_condition(problems, generation)]
    backend = group_backend_condition(want, generation)
    if backend is not None:
        conditions.append(backend)
    return {
        "observedGeneration": generation,
        "selector": resources.selector_string(owner),
        "tier": want.tier,
        "tierReason": tier_reason,
        "accelerator": spec.accelerator.type,
        "acceleratorReason": accelerator_reason(spec, old_status),
        "gpusPerReplica": want.layout.gpus_per_replica,
        "podsPerReplica": want.layout.pods_per_replica,
        "revision": want.revision,
        "workload": workload_name(owner, want, desired),
        "endpoint": resources.endpoint(owner),
        "conditions": _keep_transition_times(list(old_status.get("conditions") or []), conditions),
    }


def workload_name(owner: Owner, want: resources.Desired, desired: int) -> str:
    if want.leaderworkerset:
        return f"LeaderWorkerSet/{owner.name}"
    if want.layout.grouped:
        return f"StatefulSet/{resources.group_name(owner, want.revision, 0)}..{desired - 1}"
    return f"Deployment/{owner.name}"


def group_backend_condition(want: resources.Desired, generation: int | None) -> dict[str, Any] | None:
    """Grouped deployments say which workload runs their groups, and why (None for single-pod replicas)."""
    if not want.layout.grouped:
        return None
    if want.leaderworkerset:
        message = "each group is a LeaderWorkerSet group (size = pods per group)"
        return status.condition(status.LEADER_WORKER_SET, True, "LeaderWorkerSetAvailable", message, generation)
    message = f"the {resources.LWS_CRD} CRD is not installed: each group runs as a StatefulSet of its own"
    return status.condition(status.LEADER_WORKER_SET, False, "LeaderWorkerSetUnavailable", message, generation)


def _keep_transition_times(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Only the conditions in `new`, with lastTransitionTime carried over where the status did not flip."""
    merged = {c["type"]: c for c in status.merge_conditions(old, new)}
    return [merged[c["type"]] for c in new]


def accelerator_reason(spec: InferenceDeploymentSpec, old_status: Mapping[str, Any]) -> str:
    """Why the replicas run on `spec.accelerator.type` (the running product): the autoscaler's reason while its
    choice stands, else the spec's."""
    chosen = old_status.get("accelerator")
    if chosen == spec.accelerator.type and chosen in spec.accelerator.allowed and old_status.get("acceleratorReason"):
        return str(old_status["acceleratorReason"])
    return "set in spec.accelerator.type"


def plan(
    body: Mapping[str, Any], node_gpus: Mapping[str, int], lws: bool = False
) -> tuple[InferenceDeploymentSpec, resources.Desired, str]:
    """Spec -> desired objects, without judging or touching the cluster (the event path uses this). `lws`: the
    LeaderWorkerSet CRD is installed."""
    old_status = body.get("status") or {}
    spec = InferenceDeploymentSpec.model_validate(body["spec"])
    spec = spec.on(checks.running_product(spec, old_status.get("accelerator")))
    tier, reason = checks.choose_tier(spec, old_status.get("tier"), old_status.get("tierReason"))
    want = resources.desired(spec, owner_of(body), tier, checks.gpus_per_node(spec, node_gpus), lws)
    return spec, want, reason


async def ensure_cache_claim(kube: Kube, spec: InferenceDeploymentSpec, namespace: str) -> str | None:
    """The chart's shared model cache claim, made once per namespace that fetches models (a read when it exists,
    never changed after: the user may resize it). Returns its name when it exists now."""
    shared = resources.cache_claim(namespace)
    if spec.model.cache is not None or shared is None or not resources.cache_claim_name(spec):
        return None
    name: str = shared["metadata"]["name"]
    if await kube.get("PersistentVolumeClaim", namespace, name) is None:
        await kube.create(shared)
    return name


APPLIED_HASH_ANNOTATION = "infleet.dev/applied-hash"


def stamped(objects: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """The rendered objects, each annotated with one hash of them all: a workload carrying this hash was applied,
    together with everything else of this set, from exactly these objects (workloads are applied last)."""
    digest = hashlib.sha256(json.dumps(objects, sort_keys=True).encode()).hexdigest()[:16]
    out = []
    for obj in objects:
        annotations = {**obj["metadata"].get("annotations", {}), APPLIED_HASH_ANNOTATION: digest}
        out.append({**obj, "metadata": {**obj["metadata"], "annotations": annotations}})
    return out, digest


def unchanged(want: resources.Desired, digest: str, live: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """The live workloads when every wanted one exists and carries `digest` (nothing to apply), else None."""
    if live is None or not want.workloads:
        return None
    by_name = {w["metadata"]["name"]: w for w in live}
    found = [by_name.get(w["metadata"]["name"]) for w in want.workloads]
    if any(w is None or (w["metadata"].get("annotations") or {}).get(APPLIED_HASH_ANNOTATION) != digest for w in found):
        return None
    return [w for w in found if w is not None]


async def reconcile(
    kube: Kube,
    body: Mapping[str, Any],
    node_gpus: Mapping[str, int],
    statefulsets: list[dict[str, Any]] | None = None,
    live: list[dict[str, Any]] | None = None,
    lws: bool = False,
) -> Outcome:
    """Bring the cluster to the spec. `statefulsets`: the owner's StatefulSets if the caller has them cached.
    `live`: the owner's workloads as the watch cache has them; when they carry the hash of the rendered objects,
    nothing is applied (a resync of an unchanged fleet writes nothing). None forces the apply (drift repair).
    `lws`: the LeaderWorkerSet CRD is installed (groups become one LeaderWorkerSet)."""
    owner = owner_of(body)
    generation = body["metadata"].get("generation")
    old_status: Mapping[str, Any] = body.get("status") or {}
    spec, want, tier_reason = plan(body, node_gpus, lws)
    objects, digest = stamped(want.objects)

    ensured = await ensure_cache_claim(kube, spec, owner.namespace)
    missing_claim = None
    for where, claim in checks.claims(spec):
        if claim != ensured and await kube.get("PersistentVolumeClaim", owner.namespace, claim) is None:
            missing_claim = (where, claim)
            break
    problems = checks.problems(spec, want.tier, want.layout, node_gpus, missing_claim)

    applied: list[dict[str, Any]] = []
    same = unchanged(want, digest, live)
    if same is not None:
        metrics.APPLIES_SKIPPED.inc()
        applied = list(same)  # as our last apply left them: their generation is ours (drift detection)
        workloads = list(same)
    else:
        rest = [o for o in objects if o["kind"] not in resources.WORKLOAD_KINDS]
        applied += await asyncio.gather(*(kube.apply(obj) for obj in rest))
        applied += await asyncio.gather(*(kube.apply(obj) for obj in objects if obj not in rest))
        workloads = [o for o in applied if o["kind"] in resources.WORKLOAD_KINDS]
    deleted: list[str] = []
    # down to one pod, the budget goes (never looked for on a creation: nothing to delete then)
    reconciled_before = old_status.get("observedGeneration") is not None
    stale_budget = same is None and reconciled_before and not resources.wants_disruption_budget(spec, want.layout)
    if stale_budget and await kube.delete("PodDisruptionBudget", owner.namespace, owner.name):
        deleted.append(f"PodDisruptionBudget/{owner.name}")

    was_grouped = (old_status.get("podsPerReplica") or 1) > 1
    if want.layout.grouped or was_grouped:
        if statefulsets is None:
            statefulsets = await kube.list("StatefulSet", owner.namespace, owned_selector(owner))
        wanted = {o["metadata"]["name"] for o in want.workloads}
        others = {s["metadata"]["name"]: s for s in statefulsets if s["metadata"]["name"] not in wanted}
        new_ready = _new_groups_ready(want, workloads, resources.desired_replicas(spec))
        for name, sts in others.items():
            same_revision = sts["metadata"].get("labels", {}).get(LABEL_REVISION) == want.revision
            # an extra group of this revision is a scale-down; an old revision (or the StatefulSets a
            # LeaderWorkerSet replaces) waits for the new groups to be ready (surge)
            if (same_revision and not want.leaderworkerset) or new_ready or not want.layout.grouped:
                await kube.delete("StatefulSet", owner.namespace, name, uid=sts["metadata"].get("uid"))
                deleted.append(f"StatefulSet/{name}")
            else:
                workloads.append(sts)
        if want.layout.grouped and not was_grouped:
            await kube.delete("Deployment", owner.namespace, owner.name)
        # the StatefulSets' headless Service goes with the last of them (LWS makes a headless Service of its own)
        was_sets = str(old_status.get("workload") or "").startswith("StatefulSet/")
        kept = any(w["kind"] == "StatefulSet" for w in workloads)
        if (not want.layout.grouped or want.leaderworkerset) and not kept and (was_sets or deleted):
            await kube.delete("Service", owner.namespace, resources.group_service_name(owner))
    was_lws = str(old_status.get("workload") or "").startswith("LeaderWorkerSet/")
    if was_lws and lws and not want.leaderworkerset:  # single-pod replicas now
        await kube.delete("LeaderWorkerSet", owner.namespace, owner.name)
        deleted.append(f"LeaderWorkerSet/{owner.name}")

    new_status = judged_status(spec, owner, generation, old_status, want, problems, tier_reason)
    # what the workloads say as applied (zero groups: no workload event will ever report, so this is the only word)
    replica_part = workload_status(spec, owner, generation, old_status, want, workloads)
    old_degraded = status.find(list(old_status.get("conditions") or []), status.DEGRADED) or {}
    announced = str(old_degraded.get("message", "")) if old_degraded.get("status") == "True" else ""
    new_problems = [p for p in problems if p[1] not in announced]
    return Outcome(new_status, new_problems, applied, deleted, replica_part, workloads)


def _new_groups_ready(want: resources.Desired, workloads: list[dict[str, Any]], desired: int) -> bool:
    """Every group of the wanted revision serves, so the groups they replace may go."""
    if want.leaderworkerset:
        sets = [w for w in workloads if w["kind"] == "LeaderWorkerSet"]
        return bool(sets) and status.leaderworkerset_progress(sets[0], desired).complete
    current = [w for w in workloads if w["kind"] == "StatefulSet"]
    return want.layout.grouped and sum(status.group_ready(s) for s in current) >= len(want.workloads)
