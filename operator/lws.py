"""Is LeaderWorkerSet installed? Multi-node groups render as one LeaderWorkerSet when its CRD is installed and
established, else as one StatefulSet per group (resources.py).

The operator reads the CRD once at startup, before any reconcile, and then follows it with a watch. When the CRD
appears or goes, every grouped deployment is reconciled again: its groups move to a LeaderWorkerSet, or fall back
to StatefulSets with the `LeaderWorkerSet` condition False, reason `LeaderWorkerSetUnavailable`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from infleet.operator import handlers
from infleet.operator.kube import Kube, path
from infleet.operator.resources import LWS_CRD
from infleet.operator.state import OperatorState


def usable(crd: Mapping[str, Any]) -> bool:
    """Established and not being deleted (a CRD being deleted takes its objects with it)."""
    if crd.get("metadata", {}).get("deletionTimestamp"):
        return False
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


async def discover(kube: Kube, memo: OperatorState) -> None:
    """At startup: one list of the CRD by name (the operator may list CRDs; kopf needs that too)."""
    params = {"fieldSelector": f"metadata.name={LWS_CRD}"}
    found = await kube.request("GET", path("CustomResourceDefinition"), kind="CustomResourceDefinition", params=params)
    if any(usable(item) for item in (found or {}).get("items", [])):
        memo.crds.add(LWS_CRD)
    else:
        memo.crds.discard(LWS_CRD)


def grouped(body: Mapping[str, Any]) -> bool:
    return ((body.get("status") or {}).get("podsPerReplica") or 1) > 1


@kopf.on.event(  # type: ignore[arg-type]  # indexes: typed keyword arguments
    "apiextensions.k8s.io", "v1", "customresourcedefinitions", field="metadata.name", value=LWS_CRD
)
async def lws_crd_changed(
    type: str,
    body: kopf.Body,
    memo: OperatorState,
    logger: kopf.Logger,
    ideps: handlers.Owners,
    gpu_nodes: handlers.GpuNodes,
    group_sets: handlers.GroupSets,
    **_: Any,
) -> None:
    installed = type != "DELETED" and usable(body)
    if installed == memo.leaderworkerset:
        return
    if installed:
        memo.crds.add(LWS_CRD)
    else:
        memo.crds.discard(LWS_CRD)
    now = "LeaderWorkerSets" if installed else "StatefulSets (LeaderWorkerSet is not installed)"
    logger.warning(f"{LWS_CRD} {'appeared' if installed else 'went'}: multi-node groups now run as {now}")
    for owner in [b for key in ideps for b in ideps[key] if grouped(b)]:
        try:
            await handlers.reconcile_and_write(owner, memo, gpu_nodes, group_sets, "lws", logger)
        except (kopf.TemporaryError, kopf.PermanentError) as err:
            logger.warning(f"moving the groups of {owner['metadata']['name']} failed: {err}")
