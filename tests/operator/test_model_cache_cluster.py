"""The chart's shared model cache on a real API server: an operator given models.cache.size makes the claim once in
the namespace of a deployment that fetches its model, and the pods mount it; the claim belongs to no deployment."""

from __future__ import annotations

from pathlib import Path

import pytest

from infleet.cluster.testing import FleetHandle, wait_for
from infleet.operator import resources

from .conftest import OperatorProcess, apply, get, idep
from .specs import good_spec

pytestmark = pytest.mark.cluster


def test_the_operator_makes_the_shared_cache_claim_once(
    crds: FleetHandle, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(resources.CACHE_SIZE_ENV, "50Gi")
    monkeypatch.setenv(resources.CACHE_ACCESS_MODE_ENV, "ReadWriteOnce")
    operator = OperatorProcess(crds.kubeconfig, namespace, tmp_path)
    operator.start()
    try:
        spec = good_spec()
        spec["model"] = {"uri": "hf://org/model"}
        apply(crds, namespace, idep("fetches", spec), idep("also-fetches", spec))
        claim = wait_for(
            lambda: get(crds, namespace, "persistentvolumeclaim", "infleet-model-cache"),
            timeout=60,
            what="the shared cache claim",
        )
        assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"] and not claim["metadata"].get("ownerReferences")
        dep = wait_for(lambda: get(crds, namespace, "deployment", "fetches"), timeout=60, what="the Deployment")
        volumes = dep["spec"]["template"]["spec"]["volumes"]
        assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "infleet-model-cache"}} in volumes
        claims = get(crds, namespace, "persistentvolumeclaims")["items"]
        assert [c["metadata"]["name"] for c in claims] == ["infleet-model-cache"]  # one for both deployments
    finally:
        operator.stop()
