"""One writer for the status the operator itself decides, so that creating a deployment costs two status writes:
the reconcile's (everything it judged, with the replica, model and observation parts as they stand), then the one
that says Ready.

Five sources each own a part (`PARTS`): the reconcile (`judged`), workload events (`replicas`), pods' model fetches
(`model`), the observation loop (`observed`) and the adapter loader (`adapters`). A source hands in its part; the
writer composes the whole status from the latest part of each (a part not heard of since this process started is
taken from status as it is) and sends it as one server-side apply under one field manager. Every write carries every
part: server-side apply removes the fields a manager stops sending.

When: nothing but the reconcile writes before the reconcile of the deployment's generation has written (its write
carries the rest). Then the reconcile's and the observation loop's writes go at once, and an event's change goes at
once when a condition changes status or reason (Ready flips, a fetch fails, Progressing moves to RollingOut),
except ModelReady turning True, which is good news; replica counts and messages alone wait up to `SETTLE` seconds,
and whatever waits rides along with the next write that goes at once (a deployment that becomes Ready within
`SETTLE` of its reconcile shows its intermediate counts only in the Ready write). A write that cannot reach the API
server is retried, with backoff, until it gets through (kopf does not retry event handlers, and a settled workload
sends no more events).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from infleet.operator import api, metrics, status
from infleet.operator.kube import FIELD_MANAGER, KubeError
from infleet.operator.state import Key, OperatorState

SETTLE = 30.0  # seconds a change that needs no one's attention may wait for a write that goes at once
MAX_RETRY_DELAY = 60.0
log = logging.getLogger(__name__)

JUDGED_FIELDS: tuple[str, ...] = ("observedGeneration", "selector", "tier", "tierReason", "gpusPerReplica")
JUDGED_FIELDS += ("accelerator", "acceleratorReason", "podsPerReplica", "revision", "workload", "endpoint")
# part -> (the status fields it owns, the condition types it owns)
PARTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "judged": (JUDGED_FIELDS, (status.DEGRADED, status.LEADER_WORKER_SET)),
    "replicas": (("replicas", "readyReplicas", "updatedReplicas", "selector"), (status.READY, status.PROGRESSING)),
    "model": ((), (status.MODEL_READY,)),
    "observed": (("observed", "costPerMillionTokens"), (status.SLO_MET,)),
    "adapters": (("adapters",), ()),
}


@dataclass
class Entry:
    """What the writer holds for one deployment: its parts, what it last wrote, and a write waiting to go."""

    uid: str
    base: dict[str, Any]  # status as this process first saw it (parts not heard of come from here)
    parts: dict[str, dict[str, Any]] = field(default_factory=dict)
    written: dict[str, Any] | None = None
    generation: int = 0  # the newest metadata.generation handed in with a part
    workload_versions: dict[str, int] = field(default_factory=dict)  # workload name -> newest resourceVersion seen
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    flush: asyncio.Task[None] | None = None


def entry(memo: OperatorState, body: Mapping[str, Any]) -> Entry:
    meta = body["metadata"]
    key: Key = (meta["namespace"], meta["name"])
    found = memo.status_entries.get(key)
    if found is None or found.uid != meta["uid"]:  # new, or deleted and created again under the same name
        if found is not None and found.flush is not None:
            found.flush.cancel()
        found = Entry(uid=meta["uid"], base=dict(body.get("status") or {}))
        memo.status_entries[key] = found
    return found


def known(memo: OperatorState, body: Mapping[str, Any], part: str) -> bool:
    """Has this process heard the part from its source, or does status show it (written before a restart)?"""
    e = entry(memo, body)
    current = e.written if e.written is not None else e.base
    return part in e.parts or any(c.get("type") in PARTS[part][1] for c in current.get("conditions") or [])


def part_of(memo: OperatorState, body: Mapping[str, Any], part: str) -> dict[str, Any]:
    """A part as it stands: as last handed in, else as status shows it."""
    e = entry(memo, body)
    if part in e.parts:
        return dict(e.parts[part])
    current = e.written if e.written is not None else e.base
    fields, types = PARTS[part]
    out = {k: current[k] for k in fields if k in current}
    return {**out, "conditions": [c for c in current.get("conditions") or [] if c.get("type") in types]}


def fresh(memo: OperatorState, owner: Mapping[str, Any], workload: Mapping[str, Any]) -> bool:
    """Is this workload object newer than every earlier sight of it? A watch event that left before an apply's
    response must not put the older counts back into status."""
    meta = workload.get("metadata") or {}
    try:
        version = int(meta.get("resourceVersion") or 0)
    except ValueError:  # opaque by contract; etcd's are integers, anything else is taken as it comes
        return True
    seen = entry(memo, owner).workload_versions
    if version < seen.get(meta.get("name", ""), 0):
        return False
    seen[meta.get("name", "")] = version
    return True


def compose(current: Mapping[str, Any], parts: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The status every write sends: each part's latest fields, the rest of the operator's own fields as `current`
    has them; lastTransitionTime carried over where a condition's status did not flip."""
    own_fields = {f for fields, _ in PARTS.values() for f in fields}
    own_types = {t for _, types in PARTS.values() for t in types}
    out = {k: v for k, v in current.items() if k in own_fields}
    old_conditions = [c for c in current.get("conditions") or [] if c.get("type") in own_types]
    conditions = {c["type"]: c for c in old_conditions}
    for name, given in parts.items():
        fields, types = PARTS[name]
        for f in fields:
            out.pop(f, None)
        for t in types:
            conditions.pop(t, None)
        out.update({k: v for k, v in given.items() if k != "conditions" and v is not None})
        conditions.update({c["type"]: c for c in given.get("conditions") or [] if c["type"] in types})
    merged = {c["type"]: c for c in status.merge_conditions(old_conditions, list(conditions.values()))}
    out["conditions"] = [merged[t] for t in status.CONDITION_TYPES if t in conditions]
    return out


def _essence(st: Mapping[str, Any]) -> dict[str, Any]:
    untimed = [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in st.get("conditions") or []]
    conditions = {c.get("type"): c for c in untimed}
    return {**{k: v for k, v in st.items() if k != "conditions" and v is not None}, "conditions": conditions}


def changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Would writing `new` (the whole of the operator's own status) change what `old` shows of it?"""
    return _essence(compose(old, {})) != _essence(new)


def urgent(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """A condition changed status or reason (or appeared, or went): someone may be waiting on it. ModelReady
    turning True is the exception: the Ready that follows it says more."""
    before = {c.get("type"): c for c in old.get("conditions") or []}
    after = {c["type"]: c for c in new.get("conditions") or []}
    for type_, cond in after.items():
        was = before.get(type_)
        flipped = was is None or (was.get("status"), was.get("reason")) != (cond["status"], cond["reason"])
        if flipped and not (type_ == status.MODEL_READY and cond["status"] == "True"):
            return True
    return any(t not in after for t in before if any(t in types for _, types in PARTS.values()))


async def submit(
    memo: OperatorState, body: Mapping[str, Any], given: Mapping[str, Mapping[str, Any]], now: bool
) -> bool:
    """Hand in parts (part name -> its fields). `now`: write at once if anything changed (the reconcile, the
    observation loop); otherwise the change waits unless `urgent`. Returns whether a write was sent. A failed write
    at once raises KubeError (the caller retries: a reconcile through kopf); a failed later write is retried here."""
    e = entry(memo, body)
    meta = body["metadata"]
    async with e.lock:
        e.parts.update({part: dict(fields) for part, fields in given.items()})
        e.generation = max(e.generation, meta.get("generation") or 0)
        current = e.written if e.written is not None else e.base
        new = compose(current, e.parts)
        if not changed(current, new):
            metrics.STATUS_WRITES_SKIPPED.inc()
            return False
        # the reconcile of this generation has yet to write: its write carries what others say meanwhile (and kopf,
        # which reads observedGeneration, sees no object changed under it unhandled)
        waiting = _reconciling(e, current) and "judged" not in given
        # `now` is for the caller's own change: a tick that changes nothing of its own sends no one else's
        now = now and changed(current, compose(current, given))
        if waiting or not (now or urgent(current, new)):
            if e.flush is None or e.flush.done():
                e.flush = asyncio.create_task(_flush_later(memo, meta["namespace"], meta["name"], e, SETTLE))
            return False
        await _write(memo, meta["namespace"], meta["name"], e, new)
        return True


async def _write(memo: OperatorState, ns: str, name: str, e: Entry, new: dict[str, Any]) -> None:
    """Send `new` (the caller holds the entry's lock); whatever was waiting goes with it."""
    patch = api.InferenceDeploymentStatus.patch(new)
    await memo.client().apply_status(ns, name, patch, FIELD_MANAGER)
    e.written = new
    if e.flush is not None and not e.flush.done() and e.flush is not asyncio.current_task():
        e.flush.cancel()
        e.flush = None


def _reconciling(e: Entry, current: Mapping[str, Any]) -> bool:
    return int(current.get("observedGeneration") or 0) < e.generation


async def _flush_later(memo: OperatorState, ns: str, name: str, e: Entry, delay: float) -> None:
    attempt = 0
    while True:
        await asyncio.sleep(delay)
        if memo.status_entries.get((ns, name)) is not e:
            return  # deleted, or created again
        async with e.lock:
            current = e.written if e.written is not None else e.base
            new = compose(current, e.parts)
            if not changed(current, new):
                return
            if _reconciling(e, current):
                delay = SETTLE  # still waiting for the reconcile's write, which will carry this
                continue
            try:
                await _write(memo, ns, name, e, new)
                return
            except KubeError as err:
                if not err.retryable:
                    log.warning(f"writing the status of {ns}/{name} was refused: {err}")
                    return
                log.warning(f"writing the status of {ns}/{name} failed ({err}): retrying")
        attempt += 1
        delay = min(MAX_RETRY_DELAY, float(2 ** min(attempt, 6)))


async def submit_or_retry(
    memo: OperatorState, body: Mapping[str, Any], given: Mapping[str, Mapping[str, Any]], now: bool = False
) -> bool:
    """`submit` from an event handler or a loop: a write that cannot get through now is retried later, from the
    parts. Returns whether a write was sent."""
    try:
        return await submit(memo, body, given, now)
    except KubeError as err:
        if not err.retryable:
            raise
        e = entry(memo, body)
        meta = body["metadata"]
        log.warning(f"writing the status of {meta['namespace']}/{meta['name']} failed ({err}): retrying")
        if e.flush is None or e.flush.done():
            e.flush = asyncio.create_task(_flush_later(memo, meta["namespace"], meta["name"], e, 1.0))
        return False


def forget(memo: OperatorState, key: Key) -> None:
    found = memo.status_entries.pop(key, None)
    if found is not None and found.flush is not None:
        found.flush.cancel()
