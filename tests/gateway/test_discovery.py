"""Discovery's object mapping, static upstreams, and the scale-from-zero contract with the operator."""

from __future__ import annotations

import time

import pytest
from kubernetes import client

from infleet.gateway.activator import SCALE_FROM_ZERO_ANNOTATION
from infleet.gateway.catalog import PREFIX_AFFINITY, Adapter, Catalog, Endpoint, LookupFailed
from infleet.gateway.discovery import deployment_from, load_static, now_rfc3339, parse_upstream, slice_endpoints


def endpoint_slice(service: str, deployment: str, endpoints: list[tuple[str, bool | None]]) -> client.V1EndpointSlice:
    return client.V1EndpointSlice(
        address_type="IPv4",
        metadata=client.V1ObjectMeta(
            name=f"{service}-abcde",
            namespace="ns",
            labels={"infleet.dev/deployment": deployment, "kubernetes.io/service-name": service},
        ),
        ports=[client.DiscoveryV1EndpointPort(name="http", port=8000)],
        endpoints=[
            client.V1Endpoint(
                addresses=[ip], conditions=None if ready is None else client.V1EndpointConditions(ready=ready)
            )
            for ip, ready in endpoints
        ],
    )


def test_only_ready_endpoints_of_the_main_service_count() -> None:
    s = endpoint_slice("llama", "llama", [("10.0.0.1", True), ("10.0.0.2", False), ("10.0.0.3", None)])
    assert slice_endpoints(s) == (
        "ns",
        "llama",
        "llama-abcde",
        (Endpoint("10.0.0.1", 8000), Endpoint("10.0.0.3", 8000)),
    )
    # the headless group Service carries the same deployment label but is not where clients go
    assert slice_endpoints(endpoint_slice("llama-group", "llama", [("10.0.0.1", True)])) is None


def test_deployment_fields() -> None:
    obj = {
        "metadata": {"name": "llama", "namespace": "ns"},
        "spec": {"model": {"servedName": "meta/llama"}, "routing": {"strategy": PREFIX_AFFINITY}},
    }
    d = deployment_from(obj)
    assert (d.namespace, d.name, d.served_name, d.strategy) == ("ns", "llama", "meta/llama", PREFIX_AFFINITY)
    bare = deployment_from({"metadata": {"name": "llama", "namespace": "ns"}, "spec": {"model": {}}})
    assert bare.served_name == "llama" and bare.strategy == "leastOutstanding"


def test_slices_and_relists_update_the_catalog() -> None:
    catalog = Catalog()
    seen: list[tuple[str, str]] = []
    catalog.subscribe(seen.append)
    catalog.replace_deployments(None, [deployment_from({"metadata": {"name": "d", "namespace": "ns"}, "spec": {}})])
    entry = slice_endpoints(endpoint_slice("d", "d", [("10.0.0.1", True)]))
    assert entry is not None
    catalog.replace_slices(None, [entry])
    assert catalog.get(("ns", "d")).endpoints == (Endpoint("10.0.0.1", 8000),)
    catalog.replace_slices("ns", [])  # a relist that no longer has the slice
    assert catalog.get(("ns", "d")).endpoints == ()
    assert ("ns", "d") in seen


def test_lookups_see_every_change_to_the_catalog() -> None:
    """Readers share one view built after each change (not per request): every kind of write must show at once."""
    catalog = Catalog()
    catalog.set_deployment("a", "d", "m", adapters=(Adapter("m"), Adapter("lora")))  # an adapter named as the base
    assert catalog.lookup("m").key == ("a", "d") and catalog.lookup("lora").key == ("a", "d")
    assert catalog.lookup("m").endpoints == ()
    catalog.set_slice("a", "d", "s", (Endpoint("10.0.0.2", 80), Endpoint("10.0.0.1", 80)))
    assert catalog.lookup("m").endpoints == (Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 80))
    catalog.set_deployment("b", "d", "m")  # the same name in a second namespace: ambiguous unless narrowed
    with pytest.raises(LookupFailed) as ambiguous:
        catalog.lookup("m")
    assert ambiguous.value.status == 400 and ambiguous.value.choices == ["a/m", "b/m"]
    assert catalog.lookup("m", namespace="b").key == ("b", "d") and catalog.lookup("b/m").key == ("b", "d")
    assert catalog.lookup("m", frozenset({"a"})).key == ("a", "d")  # an API key's scope
    catalog.remove_slice("a", "d", "s")
    assert catalog.lookup("a/m").endpoints == ()
    catalog.replace_deployments("a", [])
    assert catalog.lookup("m").key == ("b", "d")
    with pytest.raises(LookupFailed) as gone:
        catalog.lookup("lora")
    assert gone.value.status == 404 and gone.value.choices == ["m"]
    catalog.replace_slices(None, [("b", "d", "s", (Endpoint("10.0.0.3", 80),))])
    assert catalog.get(("b", "d")).endpoints == (Endpoint("10.0.0.3", 80),)
    catalog.remove_deployment("b", "d")
    assert catalog.get(("b", "d")) is None and catalog.deployments() == []


def test_static_upstreams() -> None:
    catalog = Catalog()
    load_static(catalog, ["m=http://127.0.0.1:8001,http://127.0.0.2:8002", "team/x=http://h:1"], PREFIX_AFFINITY)
    assert catalog.get(("default", "m")).endpoints == (
        Endpoint("127.0.0.1", 8001),
        Endpoint("127.0.0.2", 8002),
    )
    assert catalog.lookup("team/x").strategy == PREFIX_AFFINITY
    for bad in ("m", "m=", "=http://h:1", "m=ftp://h:1", "m=http://h:1/v1"):
        with pytest.raises(ValueError, match="--upstream"):
            parse_upstream(bad)


def test_the_operator_reads_the_demand_the_gateway_writes() -> None:
    from infleet.operator.autoscaling import SCALE_FROM_ZERO_ANNOTATION as OPERATOR_ANNOTATION
    from infleet.operator.autoscaling import held_from_annotation

    assert OPERATOR_ANNOTATION == SCALE_FROM_ZERO_ANNOTATION
    meta = {"annotations": {SCALE_FROM_ZERO_ANNOTATION: now_rfc3339()}}
    assert held_from_annotation(meta, time.time()) == 1
    assert held_from_annotation(meta, time.time() + 3600) == 0  # stale demand wakes nothing
    assert held_from_annotation({"annotations": {SCALE_FROM_ZERO_ANNOTATION: "yesterday"}}, time.time()) == 0
    assert held_from_annotation({}, time.time()) == 0


def test_adapters_are_model_names_of_their_deployment() -> None:
    catalog = Catalog()
    for ns in ("a", "b"):
        obj = {"metadata": {"namespace": ns, "name": "base"}, "spec": {"adapters": [{"name": "sql"}, {"name": ns}]}}
        d = deployment_from(obj)
        catalog.set_deployment(d.namespace, d.name, d.served_name, adapters=d.adapters)
    assert catalog.lookup("a").key == ("a", "base") and catalog.lookup("b/sql").key == ("b", "base")
    assert catalog.lookup("a/sql").runtime_name("a/sql") == "sql"
    assert catalog.lookup("a/base").runtime_name("a/base") == "base"
    with pytest.raises(LookupFailed, match="'sql' is served in several namespaces; name one: a/sql, b/sql") as e:
        catalog.lookup("sql")
    assert e.value.status == 400
    assert sorted(catalog.model_ids()) == ["a", "a/base", "a/sql", "b", "b/base", "b/sql"]
    # the gateway may ask the infleet runtime to load an adapter by its URI; vLLM starts with its adapters
    obj = {"metadata": {"namespace": "a", "name": "x"}, "spec": {"adapters": [{"name": "q", "uri": "s3://m/q/"}]}}
    assert deployment_from(obj).adapter("a/q") == Adapter("q", "s3://m/q/", None)
    obj["spec"]["runtime"] = {"engine": "vllm"}
    assert deployment_from(obj).adapter("q") == Adapter("q", None, None)
