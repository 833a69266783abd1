"""Creating a deployment costs at most two writes to it: the reconcile's status (everything judged, the replicas as
applied, ModelReady and SLOMet as they stand) and the one that says Ready. Counted twice, by the API server itself:
its audit log (every write request in the test's namespace, even one that changes nothing) and a watch on the
objects (every write that made a new resourceVersion), including what kopf writes on the operator's behalf."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any

import pytest
from kubernetes import client, watch

from infleet.cluster.testing import FleetHandle, wait_for
from infleet.operator import api, observation, status_writer

from .conftest import OperatorProcess, apply, idep, wait_condition
from .specs import good_spec

pytestmark = pytest.mark.cluster

COUNT = 5
MAX_WRITES = 2  # per deployment created


def idep_writes(fleet: FleetHandle, namespace: str) -> list[dict[str, Any]]:
    """Every write request the API server answered for InferenceDeployments in `namespace` (its audit log)."""
    log = fleet.fleet.audit_log
    assert log.exists(), f"no audit log at {log}: a fleet started before the API server kept one (restart it)"
    events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [
        e
        for e in events
        if e.get("stage") == "ResponseComplete"
        and e["objectRef"].get("resource") == api.PLURAL
        and e["objectRef"].get("namespace") == namespace
    ]


class Versions:
    """Each InferenceDeployment's resourceVersions as a watch delivers them (ADDED is the creation)."""

    def __init__(self, fleet: FleetHandle, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(fleet.api)
        self.namespace = namespace
        self.changes: Counter[str] = Counter()
        self.seen: dict[str, list[dict[str, Any]]] = {}  # name -> its statuses, in order (for failure reports)
        self.watch = watch.Watch()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        args = (api.GROUP, api.VERSION, self.namespace, api.PLURAL)
        try:
            for event in self.watch.stream(self.custom.list_namespaced_custom_object, *args, timeout_seconds=300):
                name = event["object"]["metadata"]["name"]
                self.seen.setdefault(name, []).append(event["object"].get("status") or {})
                if event["type"] == "MODIFIED":
                    self.changes[name] += 1
        except Exception:  # stopped: the stream's connection is closed under it
            return

    def stop(self) -> None:
        self.watch.stop()


def test_creating_deployments_takes_at_most_two_writes_each(
    crds: FleetHandle, namespace: str, operator: OperatorProcess
) -> None:
    names = [f"w{i}" for i in range(COUNT)]
    versions = Versions(crds, namespace)
    time.sleep(1)  # the watch is open
    creates = operator.metric("infleet_operator_status_writes_total")
    try:
        apply(crds, namespace, *[idep(n, good_spec()) for n in names])
        bodies: dict[str, Any] = {}
        for n in names:
            bodies[n] = wait_condition(crds, namespace, n, "Ready", operator=operator, timeout=120)
        # anything trailing: what waits for a write (SETTLE), a tick of the observation loop (nothing to add)
        time.sleep(max(observation.INTERVAL, status_writer.SETTLE) + 3)
        wait_for(lambda: versions.changes.total() >= COUNT * 1, timeout=10, what="the watch to see the writes")
    finally:
        versions.stop()
    writes = [e for e in idep_writes(crds, namespace) if e["verb"] != "create"]  # the creates are the test's own
    server = len(writes)
    ours = operator.metric("infleet_operator_status_writes_total") - creates
    print(
        f"writes per deployment: server {server / COUNT}, operator {ours / COUNT}, per object {dict(versions.changes)}"
    )
    # everything a user needs is there, from those writes
    for n, body in bodies.items():
        st = body["status"]
        types = {c["type"]: c for c in st["conditions"]}
        assert {"Ready", "Progressing", "Degraded", "ModelReady", "SLOMet"} <= set(types), (n, types)
        assert st["readyReplicas"] == 1 and st["observedGeneration"] == body["metadata"]["generation"]
        assert types["ModelReady"]["status"] == "True" and types["Progressing"]["reason"] == "RolloutComplete"
        assert st["tier"] and st["endpoint"] and st["selector"]
    over = {n: versions.seen[n] for n in names if versions.changes[n] > MAX_WRITES}
    assert not over, f"more than {MAX_WRITES} writes: {json.dumps(over, indent=1)}"
    by = Counter((e["user"]["username"], e["userAgent"].split(" ")[0], e["verb"]) for e in writes)
    assert server <= MAX_WRITES * COUNT, f"{server} writes for {COUNT} deployments: {by}"
    assert ours == server, "every write is the operator's own status write: kopf writes nothing"
