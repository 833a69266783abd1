"""The one status writer: a deployment's creation is two writes (the reconcile's, then Ready), what needs no one's
attention waits for the next write, a failure is written at once, and after a restart nothing unchanged is
written again. A recording client stands in for the API server (tests/operator/test_creation_writes_cluster.py
counts the same on a real one)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from infleet.operator import api, model_status, reconcile, status, status_writer
from infleet.operator.state import OperatorState

from .specs import good_spec

NS, NAME, UID = "ml", "chat", "u-1"


class Recorder:
    def __init__(self) -> None:
        self.written: list[dict[str, Any]] = []
        self.managers: set[str] = set()

    async def apply_status(
        self, namespace: str, name: str, patch: api.InferenceDeploymentStatus, manager: str = ""
    ) -> dict[str, Any]:
        self.written.append(patch.wire())
        self.managers.add(manager)
        return {}


def body(st: dict[str, Any] | None = None) -> dict[str, Any]:
    meta = {"name": NAME, "namespace": NS, "uid": UID, "generation": 1}
    return {"metadata": meta, "spec": good_spec(), "status": st or {}}


def deployment(replicas: int, ready: int, version: int) -> dict[str, Any]:
    st = {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas, "readyReplicas": ready}
    meta = {"name": NAME, "generation": 1, "resourceVersion": str(version)}
    return {"kind": "Deployment", "metadata": meta, "status": st}


def replica_part(owner: dict[str, Any], *workloads: dict[str, Any]) -> dict[str, Any]:
    spec, want, _ = reconcile.plan(owner, {})
    return reconcile.workload_status(spec, reconcile.owner_of(owner), 1, {}, want, list(workloads))


def judged(owner: dict[str, Any]) -> dict[str, Any]:
    spec, want, reason = reconcile.plan(owner, {})
    return reconcile.judged_status(spec, reconcile.owner_of(owner), 1, {}, want, [], reason)


def model(fetched: bool | None = None, failed: str | None = None) -> dict[str, Any]:
    spec = api.InferenceDeploymentSpec.model_validate(good_spec())
    state: dict[str, Any] = {}
    if fetched:
        state = {"state": {"terminated": {"exitCode": 0}}}
    if failed:
        state = {"state": {"terminated": {"exitCode": 1, "message": f"{failed}: no such repository"}}}
    return {"conditions": [model_status.condition(spec, [state] if state else [], 1)]}


def types(written: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in written["conditions"]}


def run(scenario: Any) -> Any:
    return asyncio.run(scenario())


def test_creation_is_one_write_at_the_reconcile_and_one_at_ready() -> None:
    async def scenario() -> Recorder:
        kube, memo, owner = Recorder(), OperatorState(), body()
        memo.kube = kube  # type: ignore[assignment]
        parts = {"judged": judged(owner), "replicas": replica_part(owner, deployment(0, 0, 1)), "model": model()}
        assert await status_writer.submit(memo, owner, parts, now=True)
        # the pod exists, its fetch is done, the Deployment counts it: nothing anyone waits on
        assert not await status_writer.submit(
            memo, owner, {"replicas": replica_part(owner, deployment(1, 0, 2))}, False
        )
        assert not await status_writer.submit(memo, owner, {"model": model(fetched=True)}, now=False)
        assert memo.status_entries[(NS, NAME)].flush is not None, "the counts wait, they are not dropped"
        assert await status_writer.submit(memo, owner, {"replicas": replica_part(owner, deployment(1, 1, 3))}, False)
        assert memo.status_entries[(NS, NAME)].flush is None, "what waited went with the Ready write"
        return kube

    kube = run(scenario)
    assert len(kube.written) == 2 and kube.managers == {"infleet-operator"}
    first, ready = kube.written
    assert types(first)["Ready"]["status"] == "False" and types(first)["Progressing"]["reason"] == "Creating"
    assert types(first)["ModelReady"]["reason"] == "Pending" and types(first)["Degraded"]["status"] == "False"
    assert first["observedGeneration"] == 1 and first["tier"] and first["endpoint"]
    assert types(ready)["Ready"]["status"] == "True" and types(ready)["ModelReady"]["status"] == "True"
    assert ready["readyReplicas"] == 1 and ready["replicas"] == 1
    assert ready["tier"] == first["tier"], "every write carries every part (server-side apply drops the rest)"
    assert types(ready)["Degraded"]["lastTransitionTime"] == types(first)["Degraded"]["lastTransitionTime"]


def test_an_event_before_the_reconciles_write_waits_for_it() -> None:
    async def scenario() -> Recorder:
        kube, memo, owner = Recorder(), OperatorState(), body()
        memo.kube = kube  # type: ignore[assignment]
        assert not await status_writer.submit(
            memo, owner, {"replicas": replica_part(owner, deployment(0, 0, 2))}, False
        )
        observed = {"observed": {"window": "1m"}, "conditions": []}
        assert not await status_writer.submit(memo, owner, {"observed": observed}, now=True), "the loop waits too"
        await status_writer.submit(memo, owner, {"judged": judged(owner), "model": model()}, now=True)
        return kube

    written = run(scenario).written
    assert len(written) == 1 and types(written[0])["Progressing"]["reason"] == "Creating"


def test_a_fetch_failure_is_written_at_once() -> None:
    async def scenario() -> Recorder:
        kube, memo, owner = Recorder(), OperatorState(), body()
        memo.kube = kube  # type: ignore[assignment]
        await status_writer.submit(memo, owner, {"judged": judged(owner), "model": model()}, now=True)
        assert await status_writer.submit(memo, owner, {"model": model(failed="NotFound")}, now=False)
        return kube

    written = run(scenario).written
    assert types(written[-1])["ModelReady"]["reason"] == "NotFound"


def test_what_waits_is_written_after_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status_writer, "SETTLE", 0.05)

    async def scenario() -> Recorder:
        kube, memo, owner = Recorder(), OperatorState(), body()
        memo.kube = kube  # type: ignore[assignment]
        parts = {"judged": judged(owner), "replicas": replica_part(owner, deployment(0, 0, 1))}
        await status_writer.submit(memo, owner, parts, now=True)
        await status_writer.submit(memo, owner, {"replicas": replica_part(owner, deployment(1, 0, 2))}, now=False)
        flush = memo.status_entries[(NS, NAME)].flush
        assert flush is not None and len(kube.written) == 1
        await asyncio.wait_for(flush, timeout=10)
        return kube

    written = run(scenario).written
    assert len(written) == 2 and written[-1]["replicas"] == 1 and written[-1]["readyReplicas"] == 0


def test_after_a_restart_an_unchanged_status_is_not_written_again() -> None:
    async def first_life() -> dict[str, Any]:
        kube, memo, owner = Recorder(), OperatorState(), body()
        memo.kube = kube  # type: ignore[assignment]
        observed = {
            "observed": {"window": "1m"},
            "conditions": [status.condition(status.SLO_MET, None, "NoTargets", "x", 1)],
        }
        parts = {"judged": judged(owner), "replicas": replica_part(owner, deployment(1, 1, 3)), "model": model(True)}
        await status_writer.submit(memo, owner, {**parts, "observed": observed}, now=True)
        return kube.written[-1]

    shown = run(first_life)

    async def second_life() -> Recorder:
        kube, memo, owner = Recorder(), OperatorState(), body(shown)
        memo.kube = kube  # type: ignore[assignment]
        assert status_writer.known(memo, owner, "model") and status_writer.known(memo, owner, "observed")
        # the resumed reconcile, the replica refresh, the pod's and the observation loop's first looks
        await status_writer.submit(memo, owner, {"judged": judged(owner)}, now=True)
        await status_writer.submit(memo, owner, {"replicas": replica_part(owner, deployment(1, 1, 3))}, now=False)
        await status_writer.submit(memo, owner, {"model": model(fetched=True)}, now=False)
        observed = {
            "observed": {"window": "1m"},
            "conditions": [status.condition(status.SLO_MET, None, "NoTargets", "x", 1)],
        }
        await status_writer.submit(memo, owner, {"observed": observed}, now=True)
        assert memo.status_entries[(NS, NAME)].flush is None
        return kube

    assert run(second_life).written == []


def test_an_event_older_than_the_apply_is_ignored() -> None:
    async def scenario() -> None:
        memo, owner = OperatorState(), body()
        assert status_writer.fresh(memo, owner, deployment(1, 1, 10))
        assert not status_writer.fresh(memo, owner, deployment(1, 0, 9))
        assert status_writer.fresh(memo, owner, deployment(1, 1, 11))

    run(scenario)


def test_compose_keeps_parts_not_heard_of_and_lets_a_part_drop_its_own_fields() -> None:
    current = {
        "tier": "bf16",
        "costPerMillionTokens": 1.5,
        "conditions": [status.condition(status.SLO_MET, True, "TargetsMet", "", 1)],
    }
    out = status_writer.compose(current, {"observed": {"observed": {"window": "1m"}, "conditions": []}})
    assert out["tier"] == "bf16", "the judged part was not heard of: as status shows it"
    assert "costPerMillionTokens" not in out and out["conditions"] == [], "the observation part no longer has them"


def test_a_pod_event_older_than_ready_does_not_take_modelready_back() -> None:
    async def scenario() -> Recorder:
        kube, memo, owner = Recorder(), OperatorState(), body()
        memo.kube = kube  # type: ignore[assignment]
        parts = {"judged": judged(owner), "replicas": replica_part(owner, deployment(1, 1, 3))}
        parts["model"] = {
            "conditions": [
                model_status.served(api.InferenceDeploymentSpec.model_validate(good_spec()), 1, parts["replicas"])
            ]
        }
        await status_writer.submit(memo, owner, parts, now=True)
        await model_status.write_condition(memo, owner, [])  # the pod as it was before its fetch ran
        return kube

    written = run(scenario).written
    assert len(written) == 1 and types(written[0])["ModelReady"]["reason"] == "Fetched"


def test_a_write_at_once_that_changes_nothing_of_its_own_sends_nothing_that_waits() -> None:
    async def scenario() -> Recorder:
        kube, memo, owner = Recorder(), OperatorState(), body()
        memo.kube = kube  # type: ignore[assignment]
        observed = {"observed": {"window": "1m"}, "conditions": []}
        await status_writer.submit(memo, owner, {"judged": judged(owner), "observed": observed}, now=True)
        await status_writer.submit(memo, owner, {"model": model(fetched=True)}, now=False)  # waits for Ready
        assert not await status_writer.submit(memo, owner, {"observed": observed}, now=True), "the loop's tick"
        return kube

    assert len(run(scenario).written) == 1
