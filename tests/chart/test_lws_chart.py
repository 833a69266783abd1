"""`lws.enabled`: the chart installs LeaderWorkerSet from LWS's own chart, pinned to the version the local fleet
builds, and the operator gets the LeaderWorkerSet rights wherever the cluster has LWS."""

from __future__ import annotations

import yaml

from infleet.cluster.build import LWS_VERSION

from .helm import CHART, named, of_kind, permissions, render

LWS_CRD = "leaderworkersets.leaderworkerset.x-k8s.io"
LWS_RIGHTS = {
    ("ClusterRole", "leaderworkerset.x-k8s.io", "leaderworkersets", v)
    for v in ("get", "list", "watch", "create", "patch", "delete")
}


def operator_rights(docs: list[dict[str, object]]) -> set[tuple[str, str, str, str]]:
    return set(permissions(named(docs, "ClusterRole", "-operator")["rules"], "ClusterRole"))  # type: ignore[arg-type]


def test_the_subchart_is_lws_as_the_fleet_builds_it() -> None:
    chart = yaml.safe_load((CHART / "charts" / "lws" / "Chart.yaml").read_text())
    assert chart["name"] == "lws" and chart["appVersion"] == LWS_VERSION
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["lws"]["enabled"] is False and values["lws"]["image"]["manager"]["tag"] == LWS_VERSION


def test_enabled_installs_the_crd_the_controller_and_its_webhooks() -> None:
    docs = render({"lws": {"enabled": True}}, "--include-crds")
    crds = [d["metadata"]["name"] for d in of_kind(docs, "CustomResourceDefinition")]
    assert LWS_CRD in crds
    controllers = [d for d in of_kind(docs, "Deployment") if "lws" in d["metadata"]["name"]]
    assert len(controllers) == 1
    (container,) = controllers[0]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"registry.k8s.io/lws/lws:{LWS_VERSION}"
    hooks = of_kind(docs, "MutatingWebhookConfiguration") + of_kind(docs, "ValidatingWebhookConfiguration")
    paths = {w["clientConfig"]["service"]["path"] for h in hooks for w in h["webhooks"]}
    assert "/mutate--v1-pod" in paths and "/validate-leaderworkerset-x-k8s-io-v1-leaderworkerset" in paths
    assert operator_rights(docs) >= LWS_RIGHTS


def test_off_by_default_and_rights_follow_the_cluster_api() -> None:
    docs = render({}, "--include-crds")
    assert LWS_CRD not in [d["metadata"]["name"] for d in of_kind(docs, "CustomResourceDefinition")]
    assert not operator_rights(docs) & LWS_RIGHTS
    # LWS installed on its own: the operator's rights come with the API (Helm's view of the cluster)
    with_api = render({}, "--api-versions", "leaderworkerset.x-k8s.io/v1")
    assert operator_rights(with_api) >= LWS_RIGHTS
