"""kopf's bookkeeping without writes of its own: which spec was last handled is `status.observedGeneration`.

kopf remembers the last handled spec of each object (its "diff base") to tell a creation from an update from a
resume after a restart, and by default stores it in an annotation: one more write to every InferenceDeployment
created or changed, beside the status write that already says the same thing. Here the diff base is derived from
the object itself: handled when `status.observedGeneration` is its generation (the reconcile writes it, also for
an invalid spec), never handled when status has none (a creation), and changed in `spec` otherwise (an update).
Handler progress still goes to annotations, which kopf writes only while a handler is retried.
"""

from __future__ import annotations

from typing import Any

import kopf

PREFIX = "infleet.dev"


class ObservedGenerationDiffBase(kopf.DiffBaseStorage):
    def fetch(self, *, body: kopf.Body) -> Any:
        observed = (body.get("status") or {}).get("observedGeneration")
        if observed is None:
            return None
        essence = self.build(body=body)
        if observed < (body.get("metadata") or {}).get("generation", 0):
            essence = {**essence, "spec": {"observedGeneration": observed}}  # an older spec than the one now
        return essence

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        """Nothing to store: the reconcile's status write records the generation it handled."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        """kopf's essence (spec, labels, annotations), without first deep-copying what it then drops: the status
        and the metadata's managedFields are most of an object, and every event of it is built (twice)."""
        if extra_fields:  # fields picked from the status too: kopf's own way
            return super().build(body=body, extra_fields=extra_fields)
        meta = body.get("metadata") or {}
        slim = {k: v for k, v in body.items() if k not in ("status", "metadata")}
        slim["metadata"] = {k: meta[k] for k in ("labels", "annotations") if k in meta}
        return super().build(body=slim)  # type: ignore[arg-type]  # kopf reads it as a mapping


class ProgressAnnotations(kopf.AnnotationsProgressStorage):
    """Progress of retried handlers in annotations, without kopf's `<prefix>/kopf-managed` marker (written on
    every object's first handling even when nothing else is)."""

    def _store_marker(self, prefix: str, patch: kopf.Patch, body: kopf.Body) -> None:
        return None


def storages() -> tuple[ProgressAnnotations, ObservedGenerationDiffBase]:
    return ProgressAnnotations(prefix=PREFIX), ObservedGenerationDiffBase()
