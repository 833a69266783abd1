"""One status condition type, metav1.Condition field for field, for every part that reports one.

The autoscaler's policy says whether it could read its metrics with one; the operator writes its own (Ready,
Progressing, Degraded, ModelReady, SLOMet) with the same model, and the CRD's schema for `status.conditions` is
rendered from it, so what is written and what the API server validates cannot drift.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

# metav1.Condition's own patterns: a type is a (optionally prefixed) name, a reason a CamelCase word
TYPE_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
REQUIRED: list[JsonValue] = ["type", "status", "reason", "message", "lastTransitionTime"]  # as metav1.Condition


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(word[:1].upper() + word[1:] for word in rest)


class Condition(BaseModel):
    """metav1.Condition field for field; lastTransitionTime changes only when status flips (see status.py)."""

    model_config = ConfigDict(
        alias_generator=_camel,
        populate_by_name=True,
        extra="ignore",
        frozen=True,
        json_schema_extra={"required": REQUIRED},
    )

    type: str = Field(max_length=316, pattern=TYPE_PATTERN)
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(min_length=1, max_length=1024, pattern=REASON_PATTERN)
    message: str = Field(max_length=32768)
    last_transition_time: str = Field(default_factory=now_iso, json_schema_extra={"format": "date-time"})
    observed_generation: int | None = Field(default=None, ge=0)

    @classmethod
    def of(
        cls, type_: str, status: bool | None, reason: str, message: str = "", generation: int | None = None
    ) -> Condition:
        """True/False/None (Unknown) as the API's strings."""
        text: Literal["True", "False", "Unknown"] = "Unknown" if status is None else "True" if status else "False"
        return cls(type=type_, status=text, reason=reason, message=message, observed_generation=generation)

    @property
    def is_true(self) -> bool:
        return self.status == "True"

    def wire(self) -> dict[str, Any]:
        """The camelCase dict a status patch carries."""
        return self.model_dump(by_alias=True, exclude_none=True)
