"""Two operator replicas elect one leader (kopf peering, the chart's default): killing the active replica in the
middle of a burst of reconciles leaves the standby to finish them within 30 s, with exactly one of every object.

On the local fleet each operator pod is a real process; SIGKILL gives it no chance to leave the peering object, so
the standby has to wait out the dead replica's peering lifetime (15 s), as after a crashed node."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import Any

import pytest
import yaml
from kubernetes import client

from infleet.cluster.testing import FleetHandle, wait_for
from infleet.operator.api import GROUP, PLURAL, VERSION

from .helm import CHART, helm, set_args
from .operator_scenario import H100, idep, spec

pytestmark = pytest.mark.cluster

BURST = 12
TAKEOVER_SECONDS = 30


def get(fleet: FleetHandle, namespace: str, *args: str) -> Any:
    proc = fleet.kubectl("get", *args, "-n", namespace, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def peers(fleet: FleetHandle, namespace: str) -> dict[str, dict[str, Any]]:
    """Pod name -> its peering entry (priority, lastseen, lifetime); the chart sets POD_ID to the pod's name."""
    return dict((get(fleet, namespace, "kopfpeering", "infleet-operator") or {}).get("status") or {})


def pid_of(fleet: FleetHandle, pod: dict[str, Any]) -> int:
    meta = pod["metadata"]
    pods_dir = fleet.fleet.dir / "pods" / f"{meta['namespace']}_{meta['name']}_{meta['uid']}"
    return int((pods_dir / "operator.pid").read_text())


def reconciled(fleet: FleetHandle, namespace: str) -> set[str]:
    """InferenceDeployments whose reconcile has written its status (observedGeneration) and made the Deployment."""
    ideps = get(fleet, namespace, "inferencedeployments")["items"]
    deployments = {d["metadata"]["name"] for d in get(fleet, namespace, "deployments")["items"]}
    return {
        i["metadata"]["name"]
        for i in ideps
        if (i.get("status") or {}).get("observedGeneration") and i["metadata"]["name"] in deployments
    }


def create_spaced(fleet: FleetHandle, namespace: str, gap: float = 0.1) -> None:
    custom = client.CustomObjectsApi(fleet.api)
    for i in range(BURST):
        obj = idep(f"m{i:02d}", spec({"type": H100}))
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, obj)
        time.sleep(gap)


def test_the_standby_takes_over_a_killed_leader_mid_reconcile(fleet: FleetHandle, namespace: str) -> None:
    values = {"operator": {"watchNamespaces": [namespace]}, "gateway": {"enabled": False}}  # defaults: 2, peering
    proc = helm(
        "install", namespace, str(CHART), "--namespace", namespace, *set_args(values), kubeconfig=fleet.kubeconfig
    )
    assert proc.returncode == 0, proc.stderr
    try:
        pods = wait_for(
            lambda: len(p := peers(fleet, namespace)) == 2 and p,
            timeout=120,
            what="both operator replicas in the KopfPeering",
        )
        leader_name = max(pods, key=lambda n: pods[n]["priority"])
        standby = next(n for n in pods if n != leader_name)
        leader_pid = pid_of(fleet, get(fleet, namespace, "pod", leader_name))

        # a burst of new deployments, created 0.1 s apart; the leader is killed once it has made the first workload,
        # so the rest of the burst arrives after its death, whatever the machine's speed
        burst = threading.Thread(target=create_spaced, args=(fleet, namespace))
        burst.start()
        wait_for(
            lambda: fleet.apps.list_namespaced_deployment(namespace, limit=1).items,
            timeout=60,
            interval=0.02,
            what="the leader's first workload",
        )
        os.kill(leader_pid, signal.SIGKILL)
        burst.join()
        killed = time.monotonic()
        done_before = reconciled(fleet, namespace)
        assert len(done_before) < BURST, "the leader finished the burst before the kill: nothing was taken over"

        wait_for(
            lambda: len(reconciled(fleet, namespace)) == BURST,
            timeout=120,
            what=f"all {BURST} deployments reconciled after the leader was killed",
        )
        took = time.monotonic() - killed
        print(f"leader {leader_name} killed with {len(done_before)}/{BURST} reconciled; all done {took:.1f}s later")
        assert took <= TAKEOVER_SECONDS, f"the standby {standby} took {took:.1f}s (> {TAKEOVER_SECONDS}s)"

        # the standby did them: it resumed, and reconciled every deployment the leader left unfinished
        log = fleet.kubectl("logs", standby, "-n", namespace).stdout
        assert "Resuming operations after the pause" in log, log[-2000:]
        left = BURST - len(done_before)
        assert log.split("Resuming operations")[-1].count("Handler 'reconcile' succeeded") >= left

        # no duplicates: one Deployment, one Service, one ReplicaSet per InferenceDeployment (a second template
        # applied by a second writer would show as a second ReplicaSet)
        for kind in ("deployments", "services", "replicasets"):
            owners = [
                o["metadata"]["labels"]["infleet.dev/deployment"]
                for o in get(fleet, namespace, kind, "-l", "app.kubernetes.io/managed-by=infleet")["items"]
            ]
            assert sorted(owners) == [f"m{i:02d}" for i in range(BURST)], kind

        # the killed replica's process restarts in its pod and stands by (seniority: it never preempts the
        # worker); killing the new leader hands the work back to it
        wait_for(
            lambda: len(peers(fleet, namespace)) == 2, timeout=60, what="the restarted replica back in the peering"
        )
        os.kill(pid_of(fleet, get(fleet, namespace, "pod", standby)), signal.SIGKILL)
        killed = time.monotonic()
        fleet.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(idep("after", spec({"type": H100}))))
        wait_for(lambda: "after" in reconciled(fleet, namespace), timeout=60, what="a deployment made after both kills")
        took = time.monotonic() - killed
        print(f"second kill ({standby}): the restarted {leader_name} reconciled a new deployment {took:.1f}s later")
        assert took <= TAKEOVER_SECONDS
    finally:
        fleet.kubectl("delete", "inferencedeployments", "--all", "-n", namespace, "--wait=true", check=False)
        helm("uninstall", namespace, "--namespace", namespace, "--wait", kubeconfig=fleet.kubeconfig)
