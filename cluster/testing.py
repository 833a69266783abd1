"""Test support: one local fleet per test session (reusing one that is already running), and handles to it."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config

from infleet.cluster import build
from infleet.cluster.__main__ import up
from infleet.cluster.controlplane import Fleet
from infleet.cluster.nodes import DEFAULT_FLEET
from infleet.operator.api import GROUP, PLURAL, VERSION


@dataclass
class FleetHandle:
    fleet: Fleet
    api: client.ApiClient = field(init=False)

    def __post_init__(self) -> None:
        self.api = config.new_client_from_config(str(self.kubeconfig))

    @property
    def kubeconfig(self) -> Path:
        return self.fleet.kubeconfig

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return kubectl(self.kubeconfig, *args, input=input, check=check)


def kubectl(
    kubeconfig: Path, *args: str, input: str | None = None, check: bool = True, binary: Path | str | None = None
) -> subprocess.CompletedProcess[str]:
    """kubectl against a kubeconfig; a failure fails the test with kubectl's own output."""
    cmd = [str(binary or build.binaries().kubectl), f"--kubeconfig={kubeconfig}", *args]
    proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc


CRDS = Path(__file__).resolve().parents[1] / "crds"  # the checkout's, beside cluster/


def session_fleet() -> Iterator[FleetHandle]:
    """Bring the fleet up once for the session, or reuse a running one (then leave it running). Either way it
    serves this checkout's CRDs: a fleet's store outlives a run, and Helm installs a chart's CRDs only once."""
    fleet = Fleet()
    states = fleet.status() if build.binaries().kube_apiserver.exists() else {}
    reuse = bool(states) and all(s == "running" for s in states.values())
    if not reuse:
        up(DEFAULT_FLEET, None)
    handle = FleetHandle(fleet)
    if CRDS.is_dir():
        handle.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS))
    for namespace in handle.core.list_namespace().items:  # left Terminating by an earlier run's stopped operator
        if namespace.status.phase == "Terminating" and namespace.metadata.name.startswith("t-"):
            release_finalizers(handle, namespace.metadata.name)
    try:
        yield handle
    finally:
        if not reuse:
            fleet.down()


def fresh_namespace(handle: FleetHandle) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    handle.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    deadline = time.monotonic() + 30
    while not handle.core.list_namespaced_service_account(name, field_selector="metadata.name=default").items:
        if time.monotonic() > deadline:
            raise RuntimeError(f"namespace {name} has no default ServiceAccount after 30s")
        time.sleep(0.1)
    try:
        yield name
    finally:
        release_finalizers(handle, name)
        handle.core.delete_namespace(name)


def release_finalizers(handle: FleetHandle, namespace: str) -> None:
    """Drop the finalizers of the InferenceDeployments left in a test's namespace: the test's operator has stopped
    by now, and nothing else would remove them, so the namespace would stay Terminating in the fleet's store."""
    custom = client.CustomObjectsApi(handle.api)
    for obj in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]:
        if obj["metadata"].get("finalizers"):
            patch = {"metadata": {"finalizers": None}}
            custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, obj["metadata"]["name"], patch)


def wait_for(predicate: Callable[[], Any], timeout: float = 60, interval: float = 0.25, what: str = "condition") -> Any:
    """Poll until `predicate()` is truthy and return it; fail the test with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def capacity_cost(
    uri: str, gpu: str, tier: str, mix: tuple[float, float] | None = None, hourly: float | None = None
) -> float:
    """$/1M tokens of one replica's capacity at 70% planned utilization, as an operator run with `--replica-device
    cpu` prices `tier` on `gpu` (the shipped measured CPU profile; the default price table, or `hourly`) at the
    token `mix` (None: the reference mix): what a `cost.maxPerMillionTokens` budget is compared with. Tests set
    their budgets from it, so a re-measured profile moves the budgets with it."""
    from infleet.autoscaler import cost, profiles, tiers

    choice = profiles.tier_options(uri, gpu, [tier], replica_device="cpu", mix=mix)
    if not choice.options:
        raise AssertionError(f"no {tier} option for {uri} on {gpu}: {choice.source}")
    prices = cost.price_table({gpu: hourly} if hourly is not None else None)
    (priced,) = tiers.price_options(choice.options, 1.0, 0.7, prices)
    return priced.capacity_cost_per_million_tokens


def budget_between(cheaper: float, dearer: float) -> float:
    """A round budget (two significant digits) strictly between two capacity costs, for a test that wants the
    dearer tier over its budget and the cheaper one within it; fails the test when the profile orders them the
    other way or too close to tell apart."""
    if not cheaper < dearer * 0.9:
        raise AssertionError(f"the profile no longer makes ${cheaper:.3g} clearly cheaper than ${dearer:.3g} per 1M")
    budget = float(f"{(cheaper * dearer) ** 0.5:.2g}")
    assert cheaper < budget < dearer, (cheaper, budget, dearer)
    return budget
