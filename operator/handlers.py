"""kopf handlers: *when* to reconcile. One handler per concern; the work itself is in reconcile.py.

- the InferenceDeployment changed (created, spec updated, operator resumed) -> full reconcile;
- an owned Deployment, StatefulSet or LeaderWorkerSet changed -> status from its ready counts, and a full
  reconcile only for drift (deleted, or its spec generation moved without this operator applying it);
- Degraded deployments are re-judged when nodes or volumes change (what was missing may have appeared);
- group pods get their `infleet.dev/rank` label from the StatefulSet ordinal (or LeaderWorkerSet's worker index);
- LeaderWorkerSets are workloads like the others; whether groups render as them is lws.py's concern.

Indexes (kopf keeps them from its watches) give the handlers the owners, their StatefulSets and the fleet's GPU
nodes without extra API calls; they arrive as typed keyword arguments (`ideps`, `group_sets`, `gpu_nodes`), which
kopf's handler protocols do not name (hence the `type: ignore` on those decorators). State is `memo`, an
`OperatorState` (state.py). Errors: conflicts, throttling and 5xx are `TemporaryError`s with exponential
backoff; a request the API server refuses for good is a `PermanentError` and a Degraded condition.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import time
from collections.abc import Mapping
from typing import Any, cast

import kopf
import pydantic

from infleet.operator import api, metrics, model_status, observation, reconcile, resources, status, status_writer
from infleet.operator.kube import KubeError
from infleet.operator.state import OperatorState

IDEP = (api.GROUP, api.VERSION, api.PLURAL)
MANAGED = resources.MANAGED_LABELS
MAX_BACKOFF = 300.0

GpuNodes = kopf.Index[str, int]  # GPU product -> GPUs per node, one entry per node
Owners = kopf.Index[Any, dict[str, Any]]  # (namespace, name) -> the InferenceDeployment
GroupSets = kopf.Index[Any, dict[str, Any]]  # (namespace, owner name) -> its group StatefulSets
OwnedDeployments = kopf.Index[Any, dict[str, Any]]  # (namespace, owner name) -> its Deployment


def backoff(retry: int) -> float:
    return float(min(MAX_BACKOFF, 2 ** min(retry, 9)))


# ---- indexes ----------------------------------------------------------------------------------------------------


# Indexes and event handlers are coroutines even when they do not await: kopf runs a plain function in its thread
# pool, a hand-off per event of every pod, node and workload, and memo is then touched from the loop alone.
@kopf.index(*IDEP)
async def ideps(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[tuple[str | None, str], dict[str, Any]]:
    return {(namespace, name): dict(body)}


@kopf.index("apps", "v1", "statefulsets", labels=MANAGED)
async def group_sets(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[Any, dict[str, Any]]:
    return {(namespace, labels.get(resources.LABEL_DEPLOYMENT, "")): dict(body)}


@kopf.index("apps", "v1", "deployments", labels=MANAGED)
async def owned_deployments(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[Any, dict[str, Any]]:
    return {(namespace, labels.get(resources.LABEL_DEPLOYMENT, "")): dict(body)}


@kopf.index("", "v1", "nodes")
async def gpu_nodes(labels: Mapping[str, str], status: Mapping[str, Any], **_: Any) -> dict[str, int] | None:
    product = labels.get(resources.GPU_PRODUCT_LABEL)
    if not product:
        return None
    allocatable = (status.get("allocatable") or {}).get(resources.GPU_RESOURCE, labels.get("nvidia.com/gpu.count", 0))
    try:
        return {product: int(allocatable)}
    except (TypeError, ValueError):
        return None


def _node_gpus(index: GpuNodes) -> dict[str, int]:
    return reconcile.node_gpus_from({k: list(index[k]) for k in index})


def _owner_body(index: Owners, namespace: str, name: str) -> dict[str, Any] | None:
    bodies = list(index.get((namespace, name), []))
    return bodies[0] if bodies else None


# ---- the InferenceDeployment itself -----------------------------------------------------------------------------


async def run_reconcile(
    body: Mapping[str, Any],
    memo: OperatorState,
    gpu_nodes: GpuNodes,
    group_sets: GroupSets,
    trigger: str,
    retry: int,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    deployments: OwnedDeployments | None = None,
) -> reconcile.Outcome:
    """Reconcile one owner and return what it found; maps every failure to kopf's retry semantics.
    `deployments`: the watch cache of owned Deployments, so that unchanged objects are not applied again; None
    applies regardless (drift repair)."""
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    started = time.perf_counter()
    try:
        async with memo.lock((ns, name)), memo.slots:
            metrics.RECONCILE_QUEUE_SECONDS.observe(time.perf_counter() - started)
            started = time.perf_counter()  # the time spent working, not queueing for a slot
            sets = list(group_sets.get((ns, name), []))
            live = None if deployments is None else [*deployments.get((ns, name), []), *sets]
            outcome = await reconcile.reconcile(
                memo.client(), body, _node_gpus(gpu_nodes), sets, live=live, lws=memo.leaderworkerset
            )
            # recorded before the lock goes: a workload event that waits on it then sees our own change as ours
            for obj in outcome.applied:
                om = obj["metadata"]
                memo.applied_generation[(obj["kind"], om["namespace"], om["name"])] = om.get("generation", 0)
    except pydantic.ValidationError as err:
        metrics.RECONCILES.labels(trigger, "invalid").inc()
        metrics.RECONCILE_ERRORS.labels("InvalidSpec").inc()
        message = "; ".join(f"spec.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        await _mark_degraded(memo, body, "InvalidSpec", message)
        raise kopf.PermanentError(f"invalid spec: {message}") from err
    except KubeError as err:
        metrics.RECONCILES.labels(trigger, "error").inc()
        metrics.RECONCILE_ERRORS.labels(err.reason or str(err.status)).inc()
        if err.retryable:
            raise kopf.TemporaryError(f"Kubernetes API: {err}", delay=backoff(retry)) from err
        await _mark_degraded(memo, body, "ApplyRejected", str(err))
        raise kopf.PermanentError(f"the API server rejected an object: {err}") from err
    finally:
        metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
    for reason, message in outcome.new_problems:
        kopf.warn(cast(kopf.Body, body), reason=reason, message=message)
        logger.warning(f"{reason}: {message}")
    metrics.RECONCILES.labels(trigger, "ok").inc()
    return outcome


async def _mark_degraded(memo: OperatorState, body: Mapping[str, Any], reason: str, message: str) -> None:
    """Degraded, with this generation marked observed: the operator has judged it (kopf_storage reads that)."""
    meta = body["metadata"]
    cond = status.condition(status.DEGRADED, True, reason, message, meta.get("generation"))
    judged = status_writer.part_of(memo, body, "judged")
    others = [c for c in judged.get("conditions") or [] if c.get("type") != status.DEGRADED]
    judged = {**judged, "observedGeneration": meta.get("generation"), "conditions": [cond, *others]}
    kopf.warn(cast(kopf.Body, body), reason=reason, message=message)
    with contextlib.suppress(KubeError):  # the condition is a courtesy; the PermanentError is logged anyway
        await status_writer.submit(memo, body, {"judged": judged}, now=True)


@kopf.on.resume(*IDEP, id="reconcile")
@kopf.on.create(*IDEP, id="reconcile")
@kopf.on.update(*IDEP, id="reconcile", field="spec")  # type: ignore[arg-type]  # indexes: typed keyword arguments
async def reconcile_deployment(
    body: kopf.Body,
    memo: OperatorState,
    retry: int,
    reason: str,
    logger: kopf.Logger,
    gpu_nodes: GpuNodes,
    group_sets: GroupSets,
    owned_deployments: OwnedDeployments,
    **_: Any,
) -> None:
    trigger = str(getattr(reason, "value", reason))
    if trigger == "create" and retry == 0:
        created = datetime.datetime.fromisoformat(body["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
        metrics.DISPATCH_SECONDS.observe(max(0.0, (datetime.datetime.now(datetime.UTC) - created).total_seconds()))
    outcome = await run_reconcile(body, memo, gpu_nodes, group_sets, trigger, retry, logger, owned_deployments)
    await _write_status(memo, body, outcome)
    if trigger != "create":  # a workload this reconcile created reports through its own events
        await refresh_workload_status(memo, body, gpu_nodes)


async def roll_out_tier(
    body: Mapping[str, Any],
    memo: OperatorState,
    gpu_nodes: GpuNodes,
    group_sets: GroupSets,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> None:
    """Roll out the tier the autoscaler just wrote to status.tier (`body` is the object after that write): the
    reconcile of a spec change, so an automatic tier change is the same surge rollout."""
    await reconcile_and_write(body, memo, gpu_nodes, group_sets, "tier", logger)


async def reconcile_and_write(
    body: Mapping[str, Any],
    memo: OperatorState,
    gpu_nodes: GpuNodes,
    group_sets: GroupSets,
    trigger: str,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> None:
    """A reconcile that something other than the owner's own change asked for, and its status."""
    outcome = await run_reconcile(body, memo, gpu_nodes, group_sets, trigger, 0, logger)
    await _write_status(memo, body, outcome)


async def refresh_workload_status(memo: OperatorState, body: Mapping[str, Any], gpu_nodes: GpuNodes) -> None:
    """Replica counts from a fresh read of the workload. Workload events keep them current; this covers the case
    where no further event comes (the operator restarted after the workload settled)."""
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    spec, want, _ = reconcile.plan(body, _node_gpus(gpu_nodes), memo.leaderworkerset)
    owner = reconcile.owner_of(body)
    kube = memo.client()
    try:
        if want.leaderworkerset:
            lws = await kube.get("LeaderWorkerSet", ns, name)
            workloads = [lws] if lws else []
        elif want.layout.grouped:
            workloads = await kube.list("StatefulSet", ns, reconcile.owned_selector(owner))
        else:
            dep = await kube.get("Deployment", ns, name)
            workloads = [dep] if dep else []
        if not all(status_writer.fresh(memo, body, w) for w in workloads):
            return
        old = body.get("status") or {}
        part = reconcile.workload_status(spec, owner, meta.get("generation"), old, want, workloads)
        await status_writer.submit_or_retry(memo, body, replica_parts(spec, meta.get("generation"), part))
    except KubeError as err:
        logging.getLogger(__name__).warning(f"refreshing replica status of {ns}/{name} failed: {err}")


# ---- re-judging: what was missing may appear ---------------------------------------------------------------------
# Event-driven rather than a timer: kopf puts a finalizer on every object a timer serves, and deleting an
# InferenceDeployment should never wait for the operator.


async def recheck_degraded(
    owners: list[dict[str, Any]],
    memo: OperatorState,
    gpu_nodes: GpuNodes,
    group_sets: GroupSets,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> None:
    for body in owners:
        if not _is_degraded(body.get("status") or {}):
            continue
        try:
            outcome = await run_reconcile(body, memo, gpu_nodes, group_sets, "recheck", 0, logger)
            await _write_status(memo, body, outcome)
        except (kopf.TemporaryError, kopf.PermanentError) as err:
            logger.warning(f"re-checking {body['metadata']['name']} failed: {err}")


@kopf.on.event("", "v1", "nodes", id="fleet-changed")  # type: ignore[arg-type]  # indexes: typed keyword arguments
async def fleet_changed(
    memo: OperatorState, logger: kopf.Logger, ideps: Owners, gpu_nodes: GpuNodes, group_sets: GroupSets, **_: Any
) -> None:
    """When GPU products or per-node GPU counts change, re-judge the deployments that are Degraded."""
    products = _node_gpus(gpu_nodes)
    if products == memo.fleet_products:
        return
    first = not memo.fleet_products
    memo.fleet_products.clear()
    memo.fleet_products.update(products)
    if not first:
        owners = [b for key in ideps for b in ideps[key]]
        await recheck_degraded(owners, memo, gpu_nodes, group_sets, logger)


@kopf.on.event("", "v1", "persistentvolumeclaims", id="volume-appeared")  # type: ignore[arg-type]  # indexes: typed keyword arguments
async def volume_appeared(
    type: str,
    namespace: str | None,
    memo: OperatorState,
    logger: kopf.Logger,
    ideps: Owners,
    gpu_nodes: GpuNodes,
    group_sets: GroupSets,
    **_: Any,
) -> None:
    if type != "ADDED":
        return
    owners = [b for key in ideps if key[0] == namespace for b in ideps[key]]
    await recheck_degraded(owners, memo, gpu_nodes, group_sets, logger)


def _is_degraded(st: Mapping[str, Any]) -> bool:
    return status.is_true(list(st.get("conditions") or []), status.DEGRADED)


def replica_parts(
    spec: api.InferenceDeploymentSpec, generation: int | None, part: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """The replica part, and ModelReady with it once every replica is ready on the latest spec (the pods' own
    events, on another watch, may say so a moment later: the Ready write then carries both)."""
    model = model_status.served(spec, generation, part)
    return {"replicas": part, "model": {"conditions": [model]}} if model else {"replicas": part}


async def _write_status(memo: OperatorState, body: Mapping[str, Any], outcome: reconcile.Outcome) -> None:
    """One status write per reconcile with everything known: what it judged, the replicas as applied, and on a new
    deployment the model and observation parts as they stand (so neither needs a write of its own); none when it
    would change nothing (a resync of an unchanged fleet)."""
    spec = api.InferenceDeploymentSpec.model_validate(body["spec"])
    generation = body["metadata"].get("generation")
    parts: dict[str, dict[str, Any]] = {"judged": outcome.status}
    if all(status_writer.fresh(memo, body, w) for w in outcome.workloads):
        parts.update(replica_parts(spec, generation, outcome.replicas))
    if "model" not in parts and not status_writer.known(memo, body, "model"):
        parts["model"] = {"conditions": [model_status.condition(spec, [], generation)]}
    if not status_writer.known(memo, body, "observed"):
        snap = observation.current_snapshot(memo)
        if snap is not None:
            parts["observed"] = observation.part_for(spec, body.get("status") or {}, snap, body["metadata"])
    try:
        await status_writer.submit(memo, body, parts, now=True)
    except KubeError as err:
        raise kopf.TemporaryError(f"writing status: {err}", delay=backoff(0)) from err


# ---- owned workloads: status and drift ----------------------------------------------------------------------------


async def _on_workload_event(
    kind: str,
    event_type: str | None,
    body: Mapping[str, Any],
    memo: OperatorState,
    ideps: Owners,
    gpu_nodes: GpuNodes,
    group_sets: GroupSets,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> None:
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    owner_name = (meta.get("labels") or {}).get(resources.LABEL_DEPLOYMENT, "")
    # kopf runs no handler before every index is filled, and an owner is indexed before its reconcile creates
    # workloads: an owner missing from the index is gone (so the operator needs no `get` on InferenceDeployments)
    owner = _owner_body(ideps, ns, owner_name)
    if owner is None or owner["metadata"].get("deletionTimestamp"):
        return
    if not any(ref.get("uid") == owner["metadata"]["uid"] for ref in meta.get("ownerReferences") or []):
        return  # a leftover of an earlier incarnation; the garbage collector takes it
    key = (kind, ns, name)
    try:
        spec, want, _ = reconcile.plan(owner, _node_gpus(gpu_nodes), memo.leaderworkerset)
    except pydantic.ValidationError:
        return  # the owner's own handler reports it
    wanted = {o["metadata"]["name"] for o in want.workloads}

    def changed_by_others() -> bool:
        return key in memo.applied_generation and meta.get("generation", 0) > memo.applied_generation[key]

    if event_type != "DELETED" and changed_by_others():
        async with memo.lock((ns, owner_name)):
            pass  # an apply of our own may still be in flight: its reconcile records the generation before unlocking
    drift = (event_type == "DELETED" and name in wanted) or (event_type != "DELETED" and changed_by_others())
    old_group_done = (
        kind == "StatefulSet" and name not in wanted and _new_groups_ready(want, group_sets, ns, owner_name)
    )
    # a LeaderWorkerSet that replaced StatefulSet groups is ready: the StatefulSets may go
    sets_replaced = (
        kind == "LeaderWorkerSet"
        and event_type != "DELETED"
        and bool(list(group_sets.get((ns, owner_name), [])))
        and status.leaderworkerset_progress(dict(body), resources.desired_replicas(spec)).complete
    )
    if drift or old_group_done or sets_replaced:
        if drift:
            metrics.DRIFT_REPAIRS.labels(kind).inc()
            logger.info(f"{kind} {name} was {'deleted' if event_type == 'DELETED' else 'changed'}: restoring it")
        try:
            outcome = await run_reconcile(owner, memo, gpu_nodes, group_sets, "drift", 0, logger)
            await _write_status(memo, owner, outcome)
        except (kopf.TemporaryError, kopf.PermanentError) as err:
            logger.warning(f"repairing {kind} {name} failed, retrying on the next event: {err}")
            return
    if kind in ("Deployment", "LeaderWorkerSet") and (event_type == "DELETED" or name not in wanted):
        return
    # the StatefulSet groups of this owner, as they are now
    sets = list(group_sets.get((ns, owner_name), []))
    sets = [s for s in sets if not (event_type == "DELETED" and s["metadata"]["name"] == name)]
    if kind == "Deployment":
        workloads = [dict(body)]
    elif kind == "LeaderWorkerSet":
        workloads = [dict(body), *sets]  # StatefulSet groups it replaces serve until it is ready
    elif want.leaderworkerset:  # a StatefulSet group a LeaderWorkerSet replaces changed or went
        try:
            lws = await memo.client().get("LeaderWorkerSet", ns, owner_name)
        except KubeError as err:
            logger.warning(f"reading LeaderWorkerSet {owner_name} failed, retrying on the next event: {err}")
            return
        workloads = [*([lws] if lws else []), *sets]
    else:
        workloads = sets
    if not status_writer.fresh(memo, owner, body):
        return  # older than what the last apply or event showed of it
    generation = owner["metadata"].get("generation")
    old = owner.get("status") or {}
    part = reconcile.workload_status(spec, reconcile.owner_of(owner), generation, old, want, workloads)
    await status_writer.submit_or_retry(memo, owner, replica_parts(spec, generation, part))


def _new_groups_ready(want: Any, group_sets: GroupSets, ns: str, owner: str) -> bool:
    live = {s["metadata"]["name"]: s for s in group_sets.get((ns, owner), [])}
    current = [live.get(o["metadata"]["name"]) for o in want.workloads]
    return bool(current) and all(s is not None and status.group_ready(s) for s in current)


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
@kopf.on.event("apps", "v1", "statefulsets", labels=MANAGED)
@kopf.on.event("leaderworkerset.x-k8s.io", "v1", "leaderworkersets", labels=MANAGED)  # type: ignore[arg-type]  # indexes: typed keyword arguments
async def workload_event(
    type: str,
    body: kopf.Body,
    resource: kopf.Resource,
    memo: OperatorState,
    logger: kopf.Logger,
    ideps: Owners,
    gpu_nodes: GpuNodes,
    group_sets: GroupSets,
    **_: Any,
) -> None:
    kind = {"deployments": "Deployment", "statefulsets": "StatefulSet"}.get(resource.plural, "LeaderWorkerSet")
    await _on_workload_event(kind, type, body, memo, ideps, gpu_nodes, group_sets, logger)


# ---- group pods -------------------------------------------------------------------------------------------------


@kopf.on.event("", "v1", "pods", labels={**MANAGED, resources.LABEL_GROUP: kopf.PRESENT})
async def label_rank(type: str, body: kopf.Body, memo: OperatorState, **_: Any) -> None:
    """Copy the StatefulSet ordinal into `infleet.dev/rank`, so `kubectl get pods -L infleet.dev/rank` shows ranks."""
    labels = body["metadata"].get("labels") or {}
    index = labels.get(resources.POD_INDEX_LABEL)
    if type == "DELETED" or index is None or labels.get(resources.LABEL_RANK) == index:
        return
    await _label_pod(memo, body, {resources.LABEL_RANK: index})


@kopf.on.event("", "v1", "pods", labels={**MANAGED, resources.LWS_WORKER_INDEX_LABEL: kopf.PRESENT})
async def label_lws_rank(type: str, body: kopf.Body, memo: OperatorState, **_: Any) -> None:
    """The same `infleet.dev/group` and `infleet.dev/rank` labels on LeaderWorkerSet pods, from the group and
    worker indexes LWS gives them."""
    labels = body["metadata"].get("labels") or {}
    wanted = {
        resources.LABEL_GROUP: labels.get(resources.LWS_GROUP_INDEX_LABEL),
        resources.LABEL_RANK: labels.get(resources.LWS_WORKER_INDEX_LABEL),
    }
    if type == "DELETED" or None in wanted.values() or all(labels.get(k) == v for k, v in wanted.items()):
        return
    await _label_pod(memo, body, {k: str(v) for k, v in wanted.items()})


async def _label_pod(memo: OperatorState, body: Mapping[str, Any], labels: dict[str, str]) -> None:
    meta = body["metadata"]
    url = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
    patch = {"metadata": {"labels": labels}}
    try:
        await memo.client().request("PATCH", url, kind="Pod", body=patch, content_type="application/merge-patch+json")
    except KubeError as err:
        if err.status not in (404, 409):
            raise


# ---- a group fails as a whole -----------------------------------------------------------------------------------

GROUP_RESTART_COOLDOWN = 30.0


def restarts(pod: Mapping[str, Any]) -> int:
    return sum(c.get("restartCount", 0) for c in (pod.get("status") or {}).get("containerStatuses") or [])


def group_of(pod: Mapping[str, Any]) -> str | None:
    """The StatefulSet a group pod belongs to (its controller owner)."""
    refs = pod["metadata"].get("ownerReferences") or []
    return next((r["name"] for r in refs if r.get("kind") == "StatefulSet" and r.get("controller")), None)


def crashed(pod: Mapping[str, Any], seen_before: int | None) -> bool:
    """A rank's container restarted since we last looked: its peers hold a broken collective and must restart."""
    return seen_before is not None and restarts(pod) > seen_before


@kopf.on.event("", "v1", "pods", labels={**MANAGED, resources.LABEL_GROUP: kopf.PRESENT}, id="restart-group")
async def restart_group(type: str, body: kopf.Body, memo: OperatorState, logger: kopf.Logger, **_: Any) -> None:
    """torch.distributed cannot re-admit a restarted rank: when one rank's container restarts, delete the other
    ranks of its group so that the StatefulSet brings the whole group back together."""
    uid = body["metadata"]["uid"]
    if resources.LWS_WORKER_INDEX_LABEL in (body["metadata"].get("labels") or {}):
        return  # LeaderWorkerSet recreates the group itself (RecreateGroupOnPodRestart)
    if type == "DELETED":
        memo.restarts_seen.pop(uid, None)
        return
    before = memo.restarts_seen.get(uid)
    memo.restarts_seen[uid] = restarts(body)
    sts = group_of(body)
    ns = body["metadata"]["namespace"]
    if sts is None or not crashed(body, before):
        return
    now = time.monotonic()
    if now - memo.group_restarted_at.get((ns, sts), -GROUP_RESTART_COOLDOWN) < GROUP_RESTART_COOLDOWN:
        return
    memo.group_restarted_at[(ns, sts)] = now
    kube = memo.client()
    labels = body["metadata"].get("labels") or {}
    selector = ",".join(
        f"{k}={labels[k]}" for k in (resources.LABEL_DEPLOYMENT, resources.LABEL_GROUP, resources.LABEL_REVISION)
    )
    for pod in await kube.list("Pod", ns, selector):
        if pod["metadata"]["uid"] != uid:
            logger.warning(f"rank {pod['metadata']['name']} restarts with its group {sts} (a peer crashed)")
            await kube.delete("Pod", ns, pod["metadata"]["name"], uid=pod["metadata"]["uid"])
