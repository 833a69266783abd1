"""Issue 9's RBAC proof: the operator does everything its scenario asks with exactly the chart's permissions, and
removing any one (resource, verb) from the chart's roles makes the scenario fail.

The chart is rendered with `operator.watchNamespaces=[<test namespace>]`, so the rules split into the cluster-scoped
ClusterRole and the namespaced Role; a cluster-wide install puts the same rules into one ClusterRole. The
exhaustive matrix is `slow` (one short scenario per permission); a fast subset runs by default.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infleet.cluster.testing import FleetHandle

from .helm import CHART, Permission, label, named, permissions, render, without
from .operator_scenario import Operator, Scenario, ScenarioFailed, bind_rules, service_account_kubeconfig

pytestmark = pytest.mark.cluster

PLACEHOLDER_NS = "rbac-proof"  # rendered with this namespace, applied to the test's own


def chart_rules() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    docs = render({"operator": {"watchNamespaces": [PLACEHOLDER_NS], "leaderElection": True}})
    cluster = named(docs, "ClusterRole", "-operator")["rules"]
    namespaced = next(
        d
        for d in docs
        if d["kind"] == "Role"
        and d["metadata"]["namespace"] == PLACEHOLDER_NS
        and d["metadata"]["name"].endswith("-operator")  # not the uninstall hook's
    )["rules"]
    return cluster, namespaced


CLUSTER_RULES, NAMESPACED_RULES = chart_rules()
ALL = permissions(CLUSTER_RULES, "ClusterRole") + permissions(NAMESPACED_RULES, "Role")
# One per kind of failure, for the default run: a workload write, a status write, a cluster-scoped watch. (Events
# are left to the exhaustive run: whether a refused event shows within the scenario's time depends on timing.)
FAST = {
    ("Role", "apps", "deployments", "create"),
    ("Role", "infleet.dev", "inferencedeployments/status", "patch"),
    ("ClusterRole", "", "nodes", "watch"),
}


@pytest.fixture
def crds(fleet: FleetHandle) -> FleetHandle:
    fleet.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    fleet.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/inferencedeployments.infleet.dev")
    return fleet


def run_scenario(
    fleet: FleetHandle, namespace: str, tmp_path: Path, cluster: list[dict[str, Any]], ns_rules: list[dict[str, Any]]
) -> Iterator[Scenario]:
    cleanup = bind_rules(fleet, namespace, cluster, ns_rules)
    kubeconfig = service_account_kubeconfig(fleet, namespace, "operator", tmp_path / "kubeconfig")
    op = Operator(kubeconfig, namespace, tmp_path / "operator.log").start()
    try:
        yield Scenario(fleet, namespace, op)
    finally:
        op.stop()
        cleanup()


def test_the_operator_works_with_exactly_the_chart_permissions(
    crds: FleetHandle, namespace: str, tmp_path: Path
) -> None:
    for scenario in run_scenario(crds, namespace, tmp_path, CLUSTER_RULES, NAMESPACED_RULES):
        try:
            passed = scenario.run()
        except ScenarioFailed as err:
            raise AssertionError(f"{err}\n--- operator log (tail):\n{scenario.op.log()[-5000:]}") from None
        assert passed[-1] == "no_permission_errors"


def check_removal(crds: FleetHandle, namespace: str, tmp_path: Path, permission: Permission) -> None:
    kind, group, resource, verb = permission
    cluster = without(CLUSTER_RULES, group, resource, verb) if kind == "ClusterRole" else CLUSTER_RULES
    ns_rules = without(NAMESPACED_RULES, group, resource, verb) if kind == "Role" else NAMESPACED_RULES
    assert (cluster, ns_rules) != (CLUSTER_RULES, NAMESPACED_RULES)
    for scenario in run_scenario(crds, namespace, tmp_path, cluster, ns_rules):
        with pytest.raises(ScenarioFailed) as failed:
            scenario.run()
        print(f"without {label(permission)}: {failed.value} (after {scenario.passed})")
        # the failure must be this permission's, not a slow step on a loaded machine
        assert failed.value.names(resource, verb), f"failed, but not for want of {verb} {resource}: {failed.value}"


@pytest.mark.parametrize("permission", sorted(FAST), ids=label)
def test_removing_a_permission_breaks_the_operator(
    crds: FleetHandle, namespace: str, tmp_path: Path, permission: Permission
) -> None:
    check_removal(crds, namespace, tmp_path, permission)


@pytest.mark.slow
@pytest.mark.exhaustive
@pytest.mark.parametrize("permission", sorted(set(ALL) - FAST), ids=label)
def test_removing_any_permission_breaks_the_operator(
    crds: FleetHandle, namespace: str, tmp_path: Path, permission: Permission
) -> None:
    check_removal(crds, namespace, tmp_path, permission)
