"""The Prometheus adapter against a real Prometheus scraping exporters that use the real metric names."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from infleet.api.metrics import TTFT_BUCKETS
from infleet.autoscaler.policy import Observation, ScalingSpec, decide
from infleet.autoscaler.prometheus import PrometheusReader, Queries
from infleet.runtime.metrics import RuntimeMetrics

from .conftest import free_port


@dataclass
class Exporters:
    infleet: RuntimeMetrics
    vllm_waiting: Gauge
    vllm_running: Gauge
    vllm_ttft: Histogram
    vllm_prompt: Counter
    vllm_generation: Counter
    vllm_success: Counter
    url: str


def _serve(registry: CollectorRegistry) -> tuple[int, Callable[[], None]]:
    port = free_port()
    server, _thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    return port, server.shutdown


@pytest.fixture(scope="module")
def exporters(prometheus_factory: Callable[[dict], str]) -> Iterator[Exporters]:
    # a runtime replica of deployment "chat": the runtime's own metrics class
    infleet = RuntimeMetrics("smollm2", "int8")
    infleet_port, stop_infleet = _serve(infleet.registry)
    # a vLLM replica of deployment "vchat": vLLM's names (colons are legal in Prometheus names)
    reg = CollectorRegistry()
    labels = ["model_name"]
    vllm_waiting = Gauge("vllm:num_requests_waiting", "", labels, registry=reg)
    vllm_running = Gauge("vllm:num_requests_running", "", labels, registry=reg)
    vllm_ttft = Histogram("vllm:time_to_first_token_seconds", "", labels, buckets=TTFT_BUCKETS, registry=reg)
    vllm_prompt = Counter("vllm:prompt_tokens", "", labels, registry=reg)
    vllm_generation = Counter("vllm:generation_tokens", "", labels, registry=reg)
    vllm_success = Counter("vllm:request_success", "", labels, registry=reg)
    for metric in (vllm_waiting, vllm_running, vllm_ttft, vllm_prompt, vllm_generation, vllm_success):
        metric.labels("llama")
    vllm_port, stop_vllm = _serve(reg)

    def job(name: str, port: int, deployment: str) -> dict:
        # static labels stand in for the kubernetes_sd relabeling the chart's PodMonitor performs
        return {
            "job_name": name,
            "scrape_interval": "1s",
            "static_configs": [
                {
                    "targets": [f"127.0.0.1:{port}"],
                    "labels": {"namespace": "default", "deployment": deployment},
                }
            ],
        }

    url = prometheus_factory(
        {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [job("infleet", infleet_port, "chat"), job("vllm", vllm_port, "vchat")],
        }
    )
    reader = PrometheusReader(url)
    deadline = time.monotonic() + 60  # targets are picked up a few seconds after start: wait for a first scrape
    while time.monotonic() < deadline and reader.scalar('count(up{job=~"infleet|vllm"} == 1)') != 2:
        time.sleep(0.5)
    assert reader.scalar('count(up{job=~"infleet|vllm"} == 1)') == 2, "Prometheus never scraped both exporters"
    time.sleep(1.5)  # one more scrape of the zero-initialized series, so rate() sees them rise
    yield Exporters(infleet, vllm_waiting, vllm_running, vllm_ttft, vllm_prompt, vllm_generation, vllm_success, url)
    stop_infleet()
    stop_vllm()


def _wait_for(
    read: Callable[[], Observation], ready: Callable[[Observation], bool], timeout: float = 45
) -> Observation:
    deadline = time.monotonic() + timeout
    obs = read()
    while not ready(obs) and time.monotonic() < deadline:
        time.sleep(0.5)
        obs = read()
    return obs


def test_reads_infleet_series_from_a_real_prometheus(exporters: Exporters) -> None:
    reader = PrometheusReader(exporters.url)
    exporters.infleet.set_queue(running=3, waiting=7, kv_usage=0.5)
    for i in range(100):  # 98 fast first tokens and 2 slow ones: the p99 lands in the (2.5, 5] bucket
        exporters.infleet.request_finished(
            prompt_tokens=100,
            generation_tokens=20,
            queue_time=0.01,
            ttft=4.0 if i < 2 else 0.05,
            itls=[0.03] * 19,
            e2e=1.0,
            finish_reason="stop",
        )
    obs = _wait_for(
        lambda: reader.observe("default", "chat", replicas=2),
        lambda o: o.queue_depth == 7 and o.ttft_p99 is not None and (o.tokens_per_second or 0) > 0,
    )
    assert obs.missing is None
    assert obs.queue_depth == 7 and obs.running == 3
    assert obs.ttft_p99 is not None and 2.5 < obs.ttft_p99 <= 4.0 + 1.0
    assert obs.tpot_p99 is not None and 0.025 < obs.tpot_p99 <= 0.05
    assert obs.e2e_p99 is not None and 0.8 < obs.e2e_p99 <= 1.5
    assert obs.tokens_per_second is not None and obs.tokens_per_second > 0
    assert obs.tokens_per_request == pytest.approx(120, rel=0.05)
    # the policy sees a TTFT p99 above a 2 s SLO and a queue: it scales up and says why
    spec = ScalingSpec(min_replicas=1, max_replicas=8, ttft_slo=2.0, tpot_slo=0.1, target_queue_per_replica=2)
    decision = decide(spec, obs, (), now=obs.sampled_at)
    assert decision.replicas > 2
    assert "TTFT p99" in decision.reason


def test_reads_vllm_names(exporters: Exporters) -> None:
    reader = PrometheusReader(exporters.url)
    exporters.vllm_waiting.labels("llama").set(5)
    exporters.vllm_running.labels("llama").set(11)
    for _ in range(50):
        exporters.vllm_ttft.labels("llama").observe(0.3)
        exporters.vllm_prompt.labels("llama").inc(500)
        exporters.vllm_generation.labels("llama").inc(50)
        exporters.vllm_success.labels("llama").inc()
    obs = _wait_for(
        lambda: reader.observe("default", "vchat", replicas=1),
        lambda o: o.queue_depth == 5 and o.ttft_p99 is not None and (o.tokens_per_second or 0) > 0,
    )
    assert obs.missing is None
    assert obs.queue_depth == 5 and obs.running == 11
    assert obs.ttft_p99 is not None and 0.25 < obs.ttft_p99 <= 0.5
    assert obs.tpot_p99 is None  # this replica exports no inter-token histogram: no data, not an error


def test_selects_by_deployment_label(exporters: Exporters) -> None:
    obs = PrometheusReader(exporters.url).observe("default", "no-such-deployment", replicas=3)
    assert obs.missing is not None and "no infleet_* or vllm:* series" in obs.missing
    assert obs.queue_depth is None
    assert 'deployment="no-such-deployment"' in Queries.for_deployment("default", "no-such-deployment").queue_depth


def test_unreachable_prometheus_is_a_held_decision_not_an_exception() -> None:
    reader = PrometheusReader(f"http://127.0.0.1:{free_port()}", timeout=2)
    obs = reader.observe("default", "chat", replicas=4)
    assert obs.missing is not None and "failed" in obs.missing
    decision = decide(ScalingSpec(min_replicas=1, max_replicas=8), obs, (), now=obs.sampled_at)
    assert decision.replicas == 4
    assert decision.held
    (condition,) = decision.conditions
    assert condition.type == "MetricsAvailable" and condition.status == "False"
    assert "Prometheus" in condition.message


def test_async_observe_for_the_operator_timer(exporters: Exporters) -> None:
    obs = asyncio.run(PrometheusReader(exporters.url).observe_async("default", "chat", replicas=2, ready_replicas=2))
    assert obs.missing is None and obs.queue_depth is not None and obs.ready_replicas == 2
    down = asyncio.run(PrometheusReader(f"http://127.0.0.1:{free_port()}", timeout=2).observe_async("d", "x", 1))
    assert down.missing is not None
