"""Scale from zero: requests wait for a ready endpoint within a bound and a timeout, and demand is recorded."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from infleet.gateway.activator import Activator, HoldPolicy, ModelStarting
from infleet.gateway.app import Gateway
from infleet.gateway.catalog import Catalog, Deployment, Endpoint
from infleet.gateway.metrics import GatewayMetrics

from .conftest import ServerThread, Upstream, serve_gateway

READY = Endpoint("127.0.0.7", 8000)


def sample(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_a_held_request_is_released_when_an_endpoint_turns_ready() -> None:
    catalog, metrics = Catalog(), GatewayMetrics()
    catalog.set_deployment("ns", "d", "m")
    demanded: list[Deployment] = []

    async def record(d: Deployment) -> None:
        demanded.append(d)

    async def scenario() -> Deployment:
        activator = Activator(catalog, metrics, HoldPolicy(max_held=4, timeout=30), record)
        activator.attach(asyncio.get_running_loop())
        waiter = asyncio.create_task(activator.endpoints(catalog.get(("ns", "d"))))
        while sample(metrics, "infleet_gateway_held_requests", namespace="ns", deployment="d") < 1:
            await asyncio.sleep(0.01)
        assert not waiter.done()
        # discovery writes from its own thread, as the Kubernetes watch does
        threading.Thread(target=catalog.set_slice, args=("ns", "d", "s1", (READY,))).start()
        return await asyncio.wait_for(waiter, 10)

    got = asyncio.run(scenario())
    assert got.endpoints == (READY,)
    assert [d.key for d in demanded] == [("ns", "d")]
    assert sample(metrics, "infleet_gateway_held_requests", namespace="ns", deployment="d") == 0
    assert sample(metrics, "infleet_gateway_held_seconds_count", namespace="ns", deployment="d") == 1


def test_ready_deployments_pass_straight_through() -> None:
    catalog, metrics = Catalog(), GatewayMetrics()
    catalog.set_deployment("ns", "d", "m")
    catalog.set_slice("ns", "d", "s", (READY,))
    got = asyncio.run(Activator(catalog, metrics).endpoints(catalog.get(("ns", "d"))))
    assert got.endpoints == (READY,)
    assert sample(metrics, "infleet_gateway_held_seconds_count", namespace="ns", deployment="d") == 0


def test_the_queue_bound_turns_extra_requests_away_and_the_timeout_ends_a_hold() -> None:
    catalog, metrics = Catalog(), GatewayMetrics()
    catalog.set_deployment("ns", "d", "m")
    d = catalog.get(("ns", "d"))
    assert d is not None

    async def scenario() -> tuple[BaseException | None, BaseException | None]:
        activator = Activator(catalog, metrics, HoldPolicy(max_held=2, timeout=0.3, retry_after=7))
        first = [asyncio.create_task(activator.endpoints(d)) for _ in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(ModelStarting) as over:
            await activator.endpoints(d)
        results = await asyncio.gather(*first, return_exceptions=True)
        return over.value, results[0] if isinstance(results[0], BaseException) else None

    over, timed_out = asyncio.run(scenario())
    assert isinstance(over, ModelStarting) and over.reason == "queue_full" and over.retry_after == 7
    assert "is starting" in over.message
    assert isinstance(timed_out, ModelStarting) and timed_out.reason == "hold_timeout"
    assert sample(metrics, "infleet_gateway_errors_total", namespace="ns", deployment="d", reason="queue_full") == 1
    assert sample(metrics, "infleet_gateway_errors_total", namespace="ns", deployment="d", reason="hold_timeout") == 2


def test_a_deleted_deployment_ends_the_hold() -> None:
    catalog, metrics = Catalog(), GatewayMetrics()
    catalog.set_deployment("ns", "d", "m")
    d = catalog.get(("ns", "d"))
    assert d is not None

    async def scenario() -> None:
        activator = Activator(catalog, metrics, HoldPolicy(timeout=30))
        activator.attach(asyncio.get_running_loop())
        waiter = asyncio.create_task(activator.endpoints(d))
        await asyncio.sleep(0.05)
        catalog.remove_deployment("ns", "d")
        with pytest.raises(LookupError, match="deleted"):
            await asyncio.wait_for(waiter, 10)

    asyncio.run(scenario())


def test_over_http_held_then_served_and_past_the_bound_503_with_retry_after() -> None:
    up = Upstream()
    gateway = Gateway(hold=HoldPolicy(max_held=1, timeout=60, retry_after=5))
    gateway.catalog.set_deployment("ns", "cold", "cold-model")
    with ServerThread(up.app()) as replica, serve_gateway(gateway) as gw:
        body = {"model": "cold-model", "messages": [{"role": "user", "content": "hi"}]}
        results: list[httpx.Response] = []
        held = threading.Thread(target=lambda: results.append(httpx.post(f"{gw.url}/v1/chat/completions", json=body)))
        held.start()
        deadline = time.monotonic() + 10
        while gateway.activator.held.get(("ns", "cold"), 0) < 1:
            assert time.monotonic() < deadline, "the first request was never held"
            time.sleep(0.01)
        over = httpx.post(f"{gw.url}/v1/chat/completions", json=body)
        assert over.status_code == 503
        assert over.headers["retry-after"] == "5"
        assert "is starting" in over.json()["error"]["message"]
        assert over.json()["error"]["type"] == "service_unavailable"
        gateway.catalog.set_slice("ns", "cold", "s", (replica.endpoint,))  # the replica turns ready
        held.join(10)
        assert results and results[0].status_code == 200
        assert results[0].json()["upstream"] == "upstream"
        metrics = httpx.get(f"{gw.url}/metrics").text
        assert 'infleet_gateway_held_seconds_count{deployment="cold",namespace="ns"} 1.0' in metrics
