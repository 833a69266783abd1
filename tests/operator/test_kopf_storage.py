"""kopf's diff base read from `status.observedGeneration` (operator/kopf_storage.py): the same essence as kopf's
own build, a creation when status has none, an update when the generation moved on."""

from __future__ import annotations

from typing import Any

import kopf

from infleet.operator.kopf_storage import ObservedGenerationDiffBase


def body(observed: int | None, generation: int = 3) -> kopf.Body:
    raw: dict[str, Any] = {
        "apiVersion": "infleet.dev/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {
            "name": "m",
            "namespace": "ns",
            "generation": generation,
            "labels": {"team": "a"},
            "annotations": {
                "note": "kept",
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
                "infleet.dev/reconcile": '{"retries": 1}',  # handler progress
                "infleet.dev/kopf-managed": "yes",  # marks the prefix as a kopf storage's
            },
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}] * 20,
        },
        "spec": {"model": {"uri": "hf://a/b"}, "replicas": 2},
        "status": {"conditions": [{"type": "Ready", "status": "True"}] * 10},
    }
    if observed is not None:
        raw["status"]["observedGeneration"] = observed
    return kopf.Body(raw)


def test_the_essence_is_kopfs_own() -> None:
    for b in (body(3), body(None)):
        ours = ObservedGenerationDiffBase().build(body=b)
        assert ours == kopf.AnnotationsDiffBaseStorage().build(body=b)  # kopf's build, on the whole body
        assert ours == {"spec": dict(b["spec"]), "metadata": {"labels": {"team": "a"}, "annotations": {"note": "kept"}}}
    extra = ObservedGenerationDiffBase().build(body=body(3), extra_fields=["status.observedGeneration"])
    assert extra["status"] == {"observedGeneration": 3}  # fields picked from the status: kopf's way


def test_handled_new_and_changed_objects() -> None:
    storage = ObservedGenerationDiffBase()
    assert storage.fetch(body=body(None)) is None  # never handled: a creation
    handled = body(3)
    assert storage.fetch(body=handled) == storage.build(body=handled)  # handled: no change
    older = body(2)
    assert storage.fetch(body=older) != storage.build(body=older)  # an older spec was handled: an update
