"""What the adapter loader decides from a spec and a replica's model list (the calls themselves run against a real
runtime in tests/runtime/test_lora_server.py)."""

from __future__ import annotations

from typing import Any

from infleet.operator import adapters, api

from .specs import good_spec

SQL = ("hf://acme/sql-lora", "v2")


def card(name: str, root: str, revision: str | None = None, parent: str | None = "smollm2") -> dict[str, Any]:
    return {"id": name, "object": "model", "root": root, "revision": revision} | ({"parent": parent} if parent else {})


def test_a_replica_s_adapters_are_its_cards_with_a_parent() -> None:
    models = {"data": [card("smollm2", "/models/x.gguf", parent=None), card("sql", *SQL), {"id": 3}]}
    assert adapters.served(models) == {"sql": SQL}


def test_the_plan_unloads_what_the_spec_dropped_or_moved_and_loads_what_is_missing() -> None:
    have = {"sql": SQL, "poet": ("file:///a/poet", None), "old": ("s3://bucket/old", None)}
    want = {"sql": ("hf://acme/sql-lora", "v3"), "poet": ("file:///a/poet", None), "law": ("s3://bucket/law", None)}
    assert adapters.plan(want, have) == (["old", "sql"], ["law", "sql"])
    assert adapters.plan(want, want) == ([], [])


def test_only_the_infleet_engine_loads_live() -> None:
    listed = [{"name": "sql", "uri": SQL[0], "revision": SQL[1]}]
    infleet = api.InferenceDeploymentSpec.model_validate(good_spec(adapters=listed))
    vllm = api.InferenceDeploymentSpec.model_validate(good_spec(adapters=listed, runtime={"engine": "vllm"}))
    assert adapters.wanted(infleet) == {"sql": SQL} and adapters.wanted(vllm) == {}
    assert adapters._has_adapters({"adapters": listed}, {})
    assert adapters._has_adapters({}, {"adapters": [{"pod": "p", "loaded": ["sql"]}]})  # rows still to clear
    assert not adapters._has_adapters({"adapters": listed, "runtime": {"engine": "vllm"}}, {})
    assert not adapters._has_adapters({}, {"adapters": []})


def test_a_ready_replica_has_an_ip_and_is_not_going() -> None:
    pod = {
        "metadata": {"name": "p"},
        "status": {"podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    assert adapters.ready(pod)
    assert not adapters.ready({**pod, "metadata": {"name": "p", "deletionTimestamp": "2026-12-06T00:00:00Z"}})
    assert not adapters.ready({**pod, "status": {"podIP": "10.0.0.1", "conditions": []}})
