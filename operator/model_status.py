"""The ModelReady condition: what the `model-fetch` init containers of a deployment's pods say about its model.

A remote model (hf://, s3://, gs://, https://) is pulled by each pod's init container (`resources.fetch_container`).
Its outcome reaches the operator through the pod's status alone: running, succeeded, or failed with its last line
`REASON: message` as the termination message (FallbackToLogsOnError), REASON being one of the fetcher's
`infleet.api.models.Reason` names. So `kubectl describe idep` says why pods wait, and a warning Event is emitted each
time the reason changes, instead of an unexplained Init:CrashLoopBackOff.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, cast

import kopf

from infleet.api import models
from infleet.operator import api, resources, status, status_writer
from infleet.operator.kube import KubeError
from infleet.operator.state import OperatorState

FETCH_FAILED = "FetchFailed"  # the fetcher died without a reason of its own (killed, out of memory)
PodFetch = dict[str, Any]  # one pod's model-fetch init container status


def condition(
    spec: api.InferenceDeploymentSpec,
    fetches: Iterable[PodFetch],
    generation: int | None,
    progress: tuple[int, int | None] | None = None,
) -> dict[str, Any]:
    """ModelReady from the fetch statuses of the deployment's pods: True once any pod has the model, False with
    the fetcher's reason while none has and one failed, False/Fetching while they download (with the bytes done
    and total of one of them, when its log has said)."""
    uri = spec.model.uri
    if not models.is_remote(uri):
        return status.condition(
            status.MODEL_READY, True, "LocalModel", f"{uri} is mounted, nothing to fetch", generation
        )
    fetches = list(fetches)
    done = [f for f in fetches if _terminated(f.get("state"), success=True)]
    if done:
        return status.condition(status.MODEL_READY, True, "Fetched", f"{uri} is in the model cache", generation)
    failures = [t for f in fetches for t in (_terminated(f.get("state")), _terminated(f.get("lastState"))) if t]
    if failures:
        latest = max(failures, key=lambda t: str(t.get("finishedAt") or ""))
        found = models.failure_of(str(latest.get("message") or ""))
        if found is not None:
            reason, why = found[0].name, found[1]
        else:
            reason, why = FETCH_FAILED, f"the fetcher exited with code {latest.get('exitCode')}"
        return status.condition(status.MODEL_READY, False, reason, f"fetching {uri}: {why}", generation)
    if any("running" in (f.get("state") or {}) for f in fetches):
        message = f"downloading {uri} into the cache"
        if progress is not None:
            message += f": {progress_text(*progress)}"
        return status.condition(status.MODEL_READY, False, "Fetching", message, generation)
    return status.condition(status.MODEL_READY, None, "Pending", f"no pod has started fetching {uri} yet", generation)


def served(
    spec: api.InferenceDeploymentSpec, generation: int | None, replicas: Mapping[str, Any]
) -> dict[str, Any] | None:
    """ModelReady when every replica is ready on the latest spec (the replica part of status says so): each pod's
    model-fetch init container succeeded (a container starts only after every init container did). The pods' own
    events come on another watch, earlier or later: an older one must not take it back."""
    conditions = {c.get("type"): c for c in replicas.get("conditions") or []}
    done = conditions.get(status.PROGRESSING, {}).get("reason") == "RolloutComplete"
    if not (done and spec.replicas > 0 and (replicas.get("readyReplicas") or 0) > 0):
        return None
    return condition(spec, [{"state": {"terminated": {"exitCode": 0}}}], generation)


def progress_text(done: int, total: int | None) -> str:
    if not total:
        return f"{done / 1e9:.2f} GB so far"
    return f"{done / 1e9:.2f} of {total / 1e9:.2f} GB ({100 * done / total:.0f}%)"


def _terminated(state: Mapping[str, Any] | None, success: bool = False) -> dict[str, Any] | None:
    t = (state or {}).get("terminated")
    if not t:
        return None
    ok = t.get("exitCode") == 0
    return dict(t) if ok == success else None


def fetch_of(pod_status: Mapping[str, Any]) -> PodFetch | None:
    return next(
        (dict(c) for c in pod_status.get("initContainerStatuses") or [] if c.get("name") == resources.FETCH_CONTAINER),
        None,
    )


# ---- the handler --------------------------------------------------------------------------------------------------

MANAGED = resources.MANAGED_LABELS


@kopf.index("", "v1", "pods", labels=MANAGED)
async def model_fetches(
    namespace: str | None, labels: Mapping[str, str], name: str, status: Mapping[str, Any], **_: Any
) -> dict[tuple[str | None, str], tuple[str, PodFetch]] | None:
    """(namespace, deployment) -> (pod, its model-fetch status), for pods that fetch."""
    fetch = fetch_of(status)
    if fetch is None:
        return None
    return {(namespace, labels.get(resources.LABEL_DEPLOYMENT, "")): (name, fetch)}


@kopf.on.event("", "v1", "pods", labels=MANAGED, id="model-ready")  # type: ignore[arg-type]  # indexes: typed keyword arguments
async def model_ready(
    labels: Mapping[str, str],
    namespace: str | None,
    memo: OperatorState,
    ideps: kopf.Index[Any, dict[str, Any]],
    model_fetches: kopf.Index[Any, tuple[str, PodFetch]],
    **_: Any,
) -> None:
    owner_name = labels.get(resources.LABEL_DEPLOYMENT, "")
    owners = list(ideps.get((namespace, owner_name), []))
    if not owners or namespace is None:
        return
    pods = list(model_fetches.get((namespace, owner_name), []))
    running = [pod for pod, f in pods if "running" in (f.get("state") or {})]
    if running:
        memo.fetching[(namespace, owner_name)] = (running[0], owners[0], [f for _, f in pods])
    else:
        memo.fetching.pop((namespace, owner_name), None)
    await write_condition(memo, owners[0], [f for _, f in pods])


async def write_condition(
    memo: OperatorState,
    owner: Mapping[str, Any],
    fetches: list[PodFetch],
    progress: tuple[int, int | None] | None = None,
) -> None:
    """ModelReady into status through the one status writer: a failure at once (with a warning Event), progress
    when the download's bytes are reported (`progress`), the rest with the next write (status_writer)."""
    meta = owner["metadata"]
    if meta.get("deletionTimestamp"):
        return
    try:
        spec = api.InferenceDeploymentSpec.model_validate(owner["spec"])
    except ValueError:
        return  # the reconcile reports an invalid spec
    new = served(spec, meta.get("generation"), status_writer.part_of(memo, owner, "replicas"))
    new = new or condition(spec, fetches, meta.get("generation"), progress)
    old = status_writer.part_of(memo, owner, "model").get("conditions") or [{}]
    try:
        written = await status_writer.submit_or_retry(memo, owner, {"model": {"conditions": [new]}}, now=bool(progress))
    except KubeError:
        return  # refused: the next pod event tries again
    if written and new["status"] == "False" and new["reason"] != "Fetching" and old[0].get("reason") != new["reason"]:
        kopf.warn(cast(kopf.Body, owner), reason=f"Model{new['reason']}", message=new["message"])


PROGRESS_INTERVAL = 10.0


async def report_progress(memo: OperatorState) -> None:
    """Bytes done and total into ModelReady while a model downloads: the last line of one fetching pod's log
    (`models.progress_line`), read with a `pods/log` GET per downloading deployment per interval."""
    for (namespace, _), (pod, owner, fetches) in list(memo.fetching.items()):
        try:
            tail = await memo.client().log_tail(namespace, pod, resources.FETCH_CONTAINER)
        except KubeError:
            continue
        found = models.progress_of((tail or "").strip().splitlines()[-1]) if (tail or "").strip() else None
        if found is not None:
            await write_condition(memo, owner, fetches, found)
