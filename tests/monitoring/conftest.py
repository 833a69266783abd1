"""Shared fixtures: the promtool and prometheus binaries (Debian's `prometheus` package, installed by `make test`'s
fleet-bins step; missing binaries fail the suite rather than skip it), and a live Prometheus over real exporters."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from infleet.api import metrics as names
from infleet.gateway.budgets import Budgets, Refused, Usage
from infleet.gateway.metrics import GatewayMetrics
from infleet.gateway.slo import Thresholds, verdicts
from infleet.gateway.teams import Teams
from infleet.monitoring.render import REPO
from infleet.monitoring.scrape import prometheus_config, static_job
from infleet.runtime.metrics import RuntimeMetrics


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: run `make fleet-bins` (installs Debian's prometheus package)", pytrace=False)
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return binary("promtool")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return binary("prometheus")


# ---- a real Prometheus scraping real exporters -------------------------------------------------------------------


# (namespace, deployment, engine, tier) of the two deployments the exporters pretend to be
INFLEET_DEPLOYMENT = ("team-a", "chat", "infleet", "int8")
VLLM_DEPLOYMENT = ("team-b", "coder", "vllm", "bf16")
DEPLOYMENTS = {INFLEET_DEPLOYMENT[1], VLLM_DEPLOYMENT[1]}
# Each deployment's own SLO (what the operator exports from its spec and the gateway judges requests by): the same
# traffic misses chat's thresholds on every SLI half the time (a 50x burn of its 1% budget: every alert fires), and
# coder's only on TTFT (a 5x burn of its 10% budget: the two ticket alerts fire, the pages do not).
SLOS = {
    "chat": (Thresholds(ttft=2.0, tpot=0.1, e2e=30.0), 0.99, 30, 0.4),  # thresholds, objective, period (d), $ limit
    "coder": (Thresholds(ttft=2.5, tpot=0.5, e2e=60.0), 0.9, 7, 5.0),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class VllmMetrics:
    """The vLLM series the rules and dashboards read, under vLLM's names and buckets (vllm/v1/metrics)."""

    def __init__(self, model: str) -> None:
        self.registry = r = CollectorRegistry()
        lab = ["model_name"]
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "", lab, buckets=names.VLLM_TTFT_BUCKETS, registry=r)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "", lab, buckets=names.VLLM_ITL_BUCKETS, registry=r)
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds", "", lab, buckets=names.VLLM_REQUEST_BUCKETS, registry=r
        )
        self.running = Gauge("vllm:num_requests_running", "", lab, registry=r)
        self.waiting = Gauge("vllm:num_requests_waiting", "", lab, registry=r)
        self.kv = Gauge("vllm:kv_cache_usage_perc", "", lab, registry=r)
        self.prompt = Counter("vllm:prompt_tokens", "", lab, registry=r)
        self.generation = Counter("vllm:generation_tokens", "", lab, registry=r)
        self.queries = Counter("vllm:prefix_cache_queries", "", lab, registry=r)
        self.hits = Counter("vllm:prefix_cache_hits", "", lab, registry=r)
        self.model = model
        # its own generator: this feeds exporters from a background thread while other tests run, and Hypothesis
        # warns about (and cannot replay) draws during which the global `random` state moves
        self.rng = random.Random(0)

    def request(self, ttft: float, itl: float, e2e: float) -> None:
        m = self.model
        self.ttft.labels(m).observe(ttft)
        self.itl.labels(m).observe(itl)
        self.e2e.labels(m).observe(e2e)
        self.prompt.labels(m).inc(100)
        self.generation.labels(m).inc(20)
        self.queries.labels(m).inc(100)
        self.hits.labels(m).inc(40)
        self.running.labels(m).set(3)
        self.waiting.labels(m).set(self.rng.randint(0, 5))
        self.kv.labels(m).set(self.rng.random())


class OperatorGauges:
    """The per-deployment gauges the operator exports (infleet.api.metrics), for both deployments."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        lab = ["namespace", "deployment"]
        self.replicas = Gauge(names.DEPLOYMENT_REPLICAS, "", lab, registry=r)
        self.desired = Gauge(names.DEPLOYMENT_DESIRED_REPLICAS, "", lab, registry=r)
        self.cost = Gauge(names.DEPLOYMENT_COST, "", lab, registry=r)
        self.tier = Gauge(names.DEPLOYMENT_TIER_INFO, "", [*lab, "tier"], registry=r)
        self.desired_tier = Gauge(names.DEPLOYMENT_DESIRED_TIER_INFO, "", [*lab, "tier"], registry=r)
        self.threshold = Gauge(names.DEPLOYMENT_SLO_THRESHOLD, "", [*lab, "sli"], registry=r)
        self.objective = Gauge(names.DEPLOYMENT_SLO_OBJECTIVE, "", lab, registry=r)
        self.period = Gauge(names.DEPLOYMENT_SLO_BUDGET_PERIOD, "", lab, registry=r)
        self.cost_limit = Gauge(names.DEPLOYMENT_COST_LIMIT, "", lab, registry=r)

    def objectives(self, ns: str, dep: str) -> None:
        thresholds, objective, days, limit = SLOS[dep]
        for sli, value in thresholds.items():
            self.threshold.labels(ns, dep, sli).set(value)
        self.objective.labels(ns, dep).set(objective)
        self.period.labels(ns, dep).set(days * 86400)
        self.cost_limit.labels(ns, dep).set(limit)

    def set(self, ns: str, dep: str, replicas: int, tier: str, previous_tier: str | None = None) -> None:
        self.replicas.labels(ns, dep).set(replicas)
        self.desired.labels(ns, dep).set(replicas + 1)
        self.cost.labels(ns, dep).set(0.5 * replicas)
        if previous_tier and previous_tier != tier:
            self.tier.remove(ns, dep, previous_tier)
            self.desired_tier.remove(ns, dep, previous_tier)
        self.tier.labels(ns, dep, tier).set(1)
        self.desired_tier.labels(ns, dep, tier).set(1)


@dataclass
class LivePrometheus:
    url: str
    started: float
    config: dict[str, object]

    def query(self, expr: str) -> list[dict[str, object]]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=30)
        body = r.json()
        assert body.get("status") == "success", f"{expr}\n-> {r.status_code} {body.get('error')}"
        result: list[dict[str, object]] = body["data"]["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: str = "1s") -> list[dict[str, object]]:
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": step}
        r = httpx.get(f"{self.url}/api/v1/query_range", params=params, timeout=30)
        body = r.json()
        assert body.get("status") == "success", f"{expr}\n-> {r.status_code} {body.get('error')}"
        result: list[dict[str, object]] = body["data"]["result"]
        return result


# teams the gateway meters: three with $1 budgets spent to 60%, 90% and 120% before traffic starts (one in each
# alert band), and web, unlimited, charged with every tick of traffic
TEAMS = Teams.parse(
    {"teams": {"half": {"monthlyBudgetDollars": 1}, "most": {"monthlyBudgetDollars": 1},
               "over": {"monthlyBudgetDollars": 1}, "web": {}}}
)  # fmt: skip


def _spend_budgets(budgets: Budgets) -> None:
    for team, tokens in (("half", 6), ("most", 9), ("over", 12)):  # $0.05 a token, on each deployment
        for ns, dep, _, _ in (INFLEET_DEPLOYMENT, VLLM_DEPLOYMENT):
            budgets.charge(TEAMS.teams[team], ns, dep, dep, 5e4, Usage(tokens, 0))


def _traffic(
    stop: threading.Event,
    switch_tier: threading.Event,
    runtime: RuntimeMetrics,
    vllm: VllmMetrics,
    operator: OperatorGauges,
    gateway: GatewayMetrics,
    budgets: Budgets,
) -> None:
    """Half the requests fast, half slow; each deployment's gateway counts judge them against its own SLO (SLOS);
    replicas and the tier change along the way, so the annotations have events to show."""
    ns_a, dep_a, _, tier_a = INFLEET_DEPLOYMENT
    ns_b, dep_b, _, tier_b = VLLM_DEPLOYMENT
    tick, tier_now = 0, tier_a
    while not stop.is_set():
        slow = tick % 2 == 1
        ttft, itl, e2e = (3.0, 0.2, 45.0) if slow else (0.3, 0.02, 4.0)
        for ns, dep in ((ns_a, dep_a), (ns_b, dep_b)):
            operator.objectives(ns, dep)
            gateway.series(ns, dep).received().inc()
            for sli, good in verdicts(SLOS[dep][0], ttft, itl, e2e).items():
                gateway.slo_requests.labels(ns, dep, sli, "good" if good else "bad").inc()
            budgets.charge(TEAMS.teams["web"], ns, dep, dep, 2.0, Usage(100, 20))
            budgets.charge(TEAMS.teams["web"], ns, dep, dep, None, Usage(10, 2))  # before the operator priced it
            gateway.response_cache.labels(ns, dep, "hit" if slow else "miss").inc()
        try:
            budgets.admit(TEAMS.teams["over"])
        except Refused:
            pass
        runtime.request_finished(
            prompt_tokens=100, generation_tokens=20, queue_time=0.01, ttft=ttft, itls=[itl] * 19, e2e=e2e,
            finish_reason="stop",
        )  # fmt: skip
        runtime.set_queue(running=2, waiting=tick % 4, kv_usage=0.3 + 0.1 * (tick % 5))
        runtime.prefix_cache(queries=100, hits=60)
        vllm.request(ttft, itl, e2e)
        replicas = 1 + (tick // 15) % 3
        new_tier = "int4" if switch_tier.is_set() else tier_a
        operator.set(ns_a, dep_a, replicas, new_tier, tier_now)
        operator.set(ns_b, dep_b, replicas, tier_b)
        tier_now = new_tier
        tick += 1
        stop.wait(0.2)


def launch_prometheus(
    prometheus_bin: str, jobs: list[dict[str, Any]], tmp: Path
) -> tuple[dict[str, Any], subprocess.Popen[bytes], int, TextIO]:
    """Prometheus with 1 s scrapes and rule evaluation over `jobs` and the chart's rule files, its data and log in
    `tmp`: (config, process, port, open log)."""
    rules = [str(p) for p in sorted((REPO / "charts/infleet/rules").glob("*.yaml"))]
    config = prometheus_config(jobs, rules, interval="1s")
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    log = (tmp / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [prometheus_bin, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    return config, proc, port, log


@pytest.fixture(scope="session")
def live_prometheus(prometheus_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LivePrometheus]:
    """Prometheus (1 s scrapes and rule evaluation, the chart's rule files) over three exporters: the runtime's own
    RuntimeMetrics, vLLM-named series, and the operator's deployment gauges; traffic flows until the session ends."""
    ns_a, dep_a, _, tier_a = INFLEET_DEPLOYMENT
    ns_b, dep_b, _, tier_b = VLLM_DEPLOYMENT
    runtime = RuntimeMetrics("smollm2", tier_a)
    vllm = VllmMetrics("coder-model")
    operator = OperatorGauges()
    gateway = GatewayMetrics()
    budgets = Budgets(gateway.registry, TEAMS)
    _spend_budgets(budgets)
    servers, jobs = [], []
    for job, registry, labels in (
        ("runtime-chat", runtime.registry, {"namespace": ns_a, "deployment": dep_a, "tier": tier_a, "pod": "chat-0"}),
        ("vllm-coder", vllm.registry, {"namespace": ns_b, "deployment": dep_b, "tier": tier_b, "pod": "coder-0"}),
        # the operator pod's own namespace must lose to the namespace label on its gauges (honor_labels)
        ("operator", operator.registry, {"namespace": "infleet-system", "pod": "operator-0"}),
        ("gateway", gateway.registry, {"namespace": "infleet-system", "pod": "gateway-0"}),
    ):
        port = free_port()
        server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
        servers.append(server)
        jobs.append(static_job(job, [f"127.0.0.1:{port}"], labels, scrape_interval="1s"))

    tmp = tmp_path_factory.mktemp("prometheus")
    config, proc, port, log = launch_prometheus(prometheus_bin, jobs, tmp)
    stop, switch_tier = threading.Event(), threading.Event()
    started = time.time()
    thread = threading.Thread(
        target=_traffic, args=(stop, switch_tier, runtime, vllm, operator, gateway, budgets), daemon=True
    )
    thread.start()
    live = LivePrometheus(f"http://127.0.0.1:{port}", started, config)
    try:
        deadline = time.time() + 60
        while True:  # ready, and the longest chain of recorded series has reached both deployments
            assert proc.poll() is None, (tmp / "prometheus.log").read_text()
            try:
                got = live.query("infleet:slo_error_budget_remaining:ratio")
                if {item["metric"]["deployment"] for item in got} >= DEPLOYMENTS:  # type: ignore[index]
                    break
            except (httpx.HTTPError, AssertionError, ValueError):
                pass
            assert time.time() < deadline, (
                "Prometheus did not record the SLO series within 60 s:\n" + (tmp / "prometheus.log").read_text()
            )
            time.sleep(0.5)
        time.sleep(6)  # longer than the tier-change annotation's offset in the test
        switch_tier.set()
        time.sleep(4)
        yield live
    finally:
        stop.set()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        for server in servers:
            server.shutdown()
