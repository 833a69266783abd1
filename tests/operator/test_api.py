"""The pydantic models: wire names, defaults, bounds, and the examples in examples/."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import yaml

from infleet.api import durations
from infleet.operator import api

from .specs import BAD_SPECS, good_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_camel_case_round_trip() -> None:
    spec = api.InferenceDeploymentSpec.model_validate(
        good_spec(slo={"ttftP99": "2s", "tpotP99": "100ms"}, scaling={"enabled": True, "minReplicas": 0})
    )
    assert spec.slo.ttft_p99 == "2s" and spec.scaling.min_replicas == 0
    wire = spec.model_dump(by_alias=True, exclude_none=True)
    assert wire["slo"]["ttftP99"] == "2s" and wire["runtime"]["maxBatchTokens"] == 8192
    assert api.InferenceDeploymentSpec.model_validate(wire) == spec


@pytest.mark.parametrize(
    ("text", "expected"),
    [("500ms", 0.5), ("2s", 2.0), ("1m30s", 90.0), ("1h", 3600.0), ("0.5s", 0.5), ("30d", 2592000.0)],
)
def test_durations(text: str, expected: float) -> None:
    assert durations.seconds(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["2 seconds", "", "-1s", "s", "1y"])
def test_durations_reject(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        durations.seconds(text)
    assert durations.seconds_or_none(text) is None


def test_the_crd_takes_no_days_in_latencies() -> None:
    with pytest.raises(pydantic.ValidationError, match="pattern"):
        api.InferenceDeploymentSpec.model_validate(good_spec(slo={"ttftP99": "1d"}))


def test_tier_auto_takes_first_allowed() -> None:
    spec = api.InferenceDeploymentSpec.model_validate(good_spec(quantization={"allowed": ["int8", "int4"]}))
    assert spec.tier == "int8" and spec.gpus_per_replica == 1


@pytest.mark.parametrize("bad", [b for b in BAD_SPECS if b.outcome == "rejected" and not b.cel], ids=lambda b: b.name)
def test_models_reject_what_the_schema_rejects(bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(pydantic.ValidationError) as info:
        api.InferenceDeploymentSpec.model_validate(bad.spec())
    locations = [".".join(str(p) for p in e["loc"]) for e in info.value.errors()]
    leaf = bad.field.split(".")[-1].split("[")[0]
    assert any(leaf in loc for loc in locations), (bad.field, locations)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_valid(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        assert doc["apiVersion"] == api.API_VERSION and doc["kind"] == api.KIND
        api.InferenceDeploymentSpec.model_validate(doc["spec"])


def test_bad_spec_table_is_big_enough() -> None:
    assert len(BAD_SPECS) >= 20
    assert {b.outcome for b in BAD_SPECS} == {"rejected", "rejected-update", "degraded"}
    assert len({b.name for b in BAD_SPECS}) == len(BAD_SPECS)
