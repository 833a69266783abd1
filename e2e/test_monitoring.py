"""Every PromQL expression the chart ships (dashboard panels, annotations and variables, recording and alerting
rules; `infleet.monitoring.catalog` walks the generated JSON and YAML) runs against the cluster's real Prometheus
after real requests went through the gateway to a real SmolLM2 runtime, and returns data for that deployment.

An expression that answers only when something happens says so below (`EVENTS`): an alert fires only while the
budget burns, a scale annotation marks only a change. When such an expression has no data, the test checks what
it is made of instead: its inputs have data for the deployment, and their values show the event did not happen.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from infleet.api import metrics as names
from infleet.cluster.stack import Stack
from infleet.cluster.testing import wait_for
from infleet.monitoring import rules
from infleet.monitoring.catalog import expressions, substitute
from infleet.monitoring.slo import COST_ALERT, TEAM_BUDGET_ALERT, WINDOWS
from infleet.operator import api

from .conftest import DEMO_NAMESPACE

pytestmark = [pytest.mark.cluster, pytest.mark.model, pytest.mark.slow]

NAME = "observed"
EXPRESSIONS = expressions()
STEP = 5.0  # seconds: the fleet's scrape and rule evaluation interval
# Grafana's variables for this one deployment; $__rate_interval as Grafana computes it for 5 s scrapes
VARIABLES = {
    "$__rate_interval": "20s",
    "$__interval": "5s",
    "$__range": "1h",
    "$namespace": DEMO_NAMESPACE,
    "$deployment": NAME,
    "$team": ".*",
}
OURS = (DEMO_NAMESPACE, NAME)
# "X >= t and Y >= t": every burn-rate alert (monitoring/rules.py)
BURN_ALERT = re.compile(r"^\s*(\S+) >= ([0-9.]+)\s+and\s+(\S+) >= ([0-9.]+)\s*$")
E2E = api.SLO.model_fields["e2e_p99"].alias or "e2eP99"  # the spec's spelling of the end-to-end target
SYSTEM = "You are a helpful assistant for a small bakery. Answer briefly and politely. " * 8  # a shared prefix


@dataclass
class Prometheus:
    url: str

    def range(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        return self.get("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{STEP:g}s")

    def instant(self, expr: str) -> list[dict[str, Any]]:
        return self.get("query", query=expr)

    def get(self, endpoint: str, **params: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/v1/{endpoint}", params=params, timeout=60)
        body = r.json()
        assert body.get("status") == "success", f"{params['query']}\n-> {r.status_code} {body.get('error')}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def evaluated_after(self, record: str, after: float) -> bool:
        """The rule recording `record` has a sample for this test's deployment from an evaluation at or after
        `after`. The fleet's Prometheus keeps its data between runs, so a series with a long window (the error
        budget's 30 days) has data from an earlier run at once; only the evaluation time says it saw this run."""
        return any(float(s["value"][1]) >= after for s in ours(self.instant(f"timestamp({record})")))


@dataclass
class Traffic:
    started: float
    ended: float
    answered: int

    def window(self) -> tuple[float, float]:
        """From before the deployment existed to now (the last requests' samples have been scraped)."""
        return self.started, time.time()


def about_us(metric: dict[str, str]) -> bool:
    """Whichever of namespace and deployment a series carries are this test's (a `group by (deployment)` variable
    carries one, a rule's SLI both, a series with neither is kept)."""
    return all(metric.get(label, ours) == ours for label, ours in zip(("namespace", "deployment"), OURS, strict=True))


def ours(result: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The series of this test's deployment (a shared Prometheus also holds other engineers' runs)."""
    return [s for s in result if (s["metric"].get("namespace"), s["metric"].get("deployment")) == OURS]


@pytest.fixture(scope="module")
def traffic(stack: Stack, smollm2: Callable[[str], dict[str, Any]], prometheus_url: str) -> Iterator[Traffic]:
    """SmolLM2 behind the gateway, sent chats (a shared system prompt, so the prefix cache hits), streams and a
    few concurrent requests (so requests wait); returns once Prometheus has recorded the SLO chain for it."""
    started = time.time()
    idep = smollm2(NAME)
    idep["spec"]["model"]["servedName"] = NAME
    # one replica, so replicas never change; every SLI set and a cost limit never reached, so every per-deployment
    # objective series (threshold lines, the cost limit) has data
    idep["spec"]["scaling"] = {"enabled": True, "minReplicas": 1, "maxReplicas": 1}
    idep["spec"]["slo"] = {**idep["spec"]["slo"], E2E: "120s"}
    idep["spec"]["cost"] = {"maxPerMillionTokens": 1e6}
    stack.apply(idep)
    stack.wait_ready(DEMO_NAMESPACE, NAME, quiet=True)
    client = openai.OpenAI(base_url=f"{stack.gateway_url()}/v1", api_key="unused", max_retries=0, timeout=300)
    answered = 0
    lock = threading.Lock()

    def ask(question: str, stream: bool = False) -> None:
        nonlocal answered
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
        if stream:
            chunks = client.chat.completions.create(model=NAME, messages=messages, max_tokens=16, stream=True)  # type: ignore[arg-type]
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)  # type: ignore[union-attr]
        else:
            reply = client.chat.completions.create(model=NAME, messages=messages, max_tokens=16)  # type: ignore[arg-type]
            assert reply.choices[0].message.content
        with lock:
            answered += 1

    stop = threading.Event()

    def trickle() -> None:  # a request every few seconds while the expressions run: rates stay defined
        while not stop.wait(3):
            try:
                ask("Is the shop open today?")
            except openai.APIError:
                pass  # counted by `answered`; the burst below already asserts that requests succeed

    background = threading.Thread(target=trickle)
    try:
        for i in range(6):
            ask(f"Do you sell bread number {i}?", stream=i % 2 == 1)
        burst = [threading.Thread(target=ask, args=(f"What cakes are there on day {i}?",)) for i in range(6)]
        for t in burst:
            t.start()
        for t in burst:
            t.join(timeout=600)
        assert answered == 12, f"only {answered} of 12 requests were answered"
        answered_at = time.time()
        background.start()
        prom = Prometheus(prometheus_url)
        # two scrape intervals after the last answer: a scrape that counted every request, then an evaluation of
        # the rules after it, first to last (the shortest window, then the end of the chain)
        seen = answered_at + 2 * STEP
        wait_for(
            lambda: all(prom.evaluated_after(r, seen) for r in (rules.good_ratio(WINDOWS[0]), rules.BUDGET_REMAINING)),
            timeout=300,
            interval=5,
            what=f"Prometheus to evaluate {DEMO_NAMESPACE}/{NAME}'s SLO rules on its requests",
        )
        # the observation loop's first cost figure (it ticks every 15 s); if none comes, that expression's test says so
        deadline = time.monotonic() + 120
        while not ours(prom.range(names.DEPLOYMENT_COST, started, time.time())) and time.monotonic() < deadline:
            time.sleep(5)
        yield Traffic(started, time.time(), answered)
    finally:
        stop.set()
        if background.is_alive():
            background.join(timeout=300)
        stack.kubectl("delete", "idep", NAME, "-n", DEMO_NAMESPACE, "--wait=false")


@pytest.fixture(scope="module")
def prometheus(prometheus_url: str) -> Prometheus:
    return Prometheus(prometheus_url)


# ---- expressions that answer only when something happens ------------------------------------------------------


def series_values(result: list[dict[str, Any]]) -> dict[tuple[tuple[str, str], ...], dict[float, float]]:
    """{labels but __name__: {timestamp: value}}"""
    return {
        tuple(sorted((k, v) for k, v in s["metric"].items() if k != "__name__")): {
            float(t): float(v) for t, v in s["values"]
        }
        for s in result
    }


def check_burn_alert(prom: Prometheus, traffic: Traffic, expr: str) -> str:
    """The alert did not fire: both burn rates have data for the deployment, and at no evaluation were both at or
    above the threshold (the budget was not burning fast enough on both windows at once)."""
    m = BURN_ALERT.match(expr)
    assert m, f"not a two-window burn alert: {expr}"
    long_rate, long_t, short_rate, short_t = m.group(1), float(m.group(2)), m.group(3), float(m.group(4))
    start, end = traffic.window()
    long_values = series_values(ours(prom.range(long_rate, start, end)))
    short_values = series_values(ours(prom.range(short_rate, start, end)))
    assert long_values, f"{long_rate} has no data for {OURS}"
    assert short_values, f"{short_rate} has no data for {OURS}"
    for labels, longs in long_values.items():
        shorts = short_values.get(labels, {})
        both = [t for t, v in longs.items() if v >= long_t and shorts.get(t, 0.0) >= short_t]
        assert not both, f"{dict(labels)}: both rates at or above the threshold at {both[:3]}, yet no alert"
    peak = max(v for longs in long_values.values() for v in longs.values())
    return f"no burn: {long_rate} peaked at {peak:.2f} against {long_t:g}"


def check_cost_within_limit(prom: Prometheus, traffic: Traffic, expr: str) -> str:
    """The cost alert did not fire: the observed $/1M tokens and the deployment's own limit both have data, and the
    cost never went above the limit."""
    start, end = traffic.window()
    cost = ours(prom.range(names.DEPLOYMENT_COST, start, end))
    limit = ours(prom.range(names.DEPLOYMENT_COST_LIMIT, start, end))
    assert cost, f"{names.DEPLOYMENT_COST} has no data for {OURS}"
    assert limit, f"{names.DEPLOYMENT_COST_LIMIT} has no data for {OURS}: the operator does not export spec.cost"
    peak, ceiling = (
        max(float(v) for s in cost for _, v in s["values"]),
        min(float(v) for s in limit for _, v in s["values"]),
    )
    assert peak <= ceiling, f"cost {peak} above the limit {ceiling}, yet no alert"
    return f"cost peaked at ${peak:.3g} / 1M tokens against a ${ceiling:g} limit"


def check_no_alert_fired(prom: Prometheus, traffic: Traffic, expr: str) -> str:
    """No SLO or cost alert fired for the deployment: every alert's expression is empty for it (checked as above)."""
    start, end = traffic.window()
    for content in rules.rule_files().values():
        for group in content["groups"]:
            for rule in group["rules"]:
                if "alert" in rule and rule["alert"] != TEAM_BUDGET_ALERT:  # per team, not per deployment
                    assert not ours(prom.range(rule["expr"], start, end)), f"{rule['alert']} held, yet not in ALERTS"
                    check = check_cost_within_limit if rule["alert"] == COST_ALERT else check_burn_alert
                    check(prom, traffic, rule["expr"])
    assert not ours(prom.range('ALERTS{alertname=~"Infleet.*"}', start, end))  # not even pending
    return "no SLO or cost alert's condition held for the deployment"


def check_no_scale(prom: Prometheus, traffic: Traffic, expr: str) -> str:
    """Replicas never changed while the deployment was observed: the gauge has data and one value throughout."""
    start, end = traffic.window()
    got = ours(prom.range(names.DEPLOYMENT_REPLICAS, start, end))
    assert got, f"{names.DEPLOYMENT_REPLICAS} has no data for {OURS}: the operator does not export it"
    values = {float(v) for s in got for _, v in s["values"]}
    assert len(values) == 1, f"replicas took the values {sorted(values)}, yet no scale annotation"
    return f"replicas stayed at {values.pop():g}"


def check_no_tier_change(prom: Prometheus, traffic: Traffic, expr: str) -> str:
    """The tier never changed: the tier gauge has data and one tier throughout."""
    start, end = traffic.window()
    got = ours(prom.range(names.DEPLOYMENT_TIER_INFO, start, end))
    assert got, f"{names.DEPLOYMENT_TIER_INFO} has no data for {OURS}: the operator does not export it"
    tiers = {s["metric"]["tier"] for s in got}
    assert len(tiers) == 1, f"tiers {tiers}, yet no tier-change annotation"
    return f"the tier stayed {tiers.pop()}"


def check_not_metered(prom: Prometheus, traffic: Traffic, expr: str) -> str:
    """The lifecycle fleet's gateway has no teams and the deployment no response cache (docs/cost-controls.md; the
    unit suite runs these expressions on real metering): none of their series exist for the deployment."""
    start, end = traffic.window()
    for metric in (names.TEAM_TOKENS, names.TEAM_SPEND, names.RESPONSE_CACHE_LOOKUPS):
        assert not ours(prom.range(metric, start, end)), f"{metric} has data for {OURS}, yet {expr} is empty"
    return "no teams and no response cache in this fleet"


Check = Callable[[Prometheus, Traffic, str], str]
# where (a prefix of catalog's `where`) -> why it may legitimately be empty, and what to check then
EVENTS: dict[str, Check] = {
    f"slo-alerts.yaml/{COST_ALERT}": check_cost_within_limit,
    "slo-alerts.yaml/": check_burn_alert,
    "slo.json/infleet / Deployment SLO/Firing SLO and cost alerts#": check_no_alert_fired,
    "fleet-overview.json/infleet / Fleet overview/Scale#annotation": check_no_scale,
    "fleet-overview.json/infleet / Fleet overview/Tier change#annotation": check_no_tier_change,
    "slo.json/infleet / Deployment SLO/Scale#annotation": check_no_scale,
    "slo.json/infleet / Deployment SLO/Tier change#annotation": check_no_tier_change,
    "chargeback.json/": check_not_metered,
    "team-budgets.yaml/": check_not_metered,
}


def event_check(where: str) -> Check | None:
    return next((check for prefix, check in EVENTS.items() if where.startswith(prefix)), None)


def test_every_event_expression_is_in_the_catalogue() -> None:
    """The exceptions name real expressions (a renamed panel must not silently leave its check behind)."""
    for prefix in EVENTS:
        assert any(where.startswith(prefix) for where, _ in EXPRESSIONS), f"no expression matches {prefix!r}"
    assert sum(1 for where, _ in EXPRESSIONS if event_check(where)) == 4 + 1 + 1 + 2 + 2 + 14 + 4


@pytest.mark.parametrize(("where", "expr"), EXPRESSIONS, ids=[w for w, _ in EXPRESSIONS])
def test_expression_returns_data_after_real_traffic(
    prometheus: Prometheus, traffic: Traffic, where: str, expr: str
) -> None:
    start, end = traffic.window()
    query = substitute(expr, VARIABLES)
    result = prometheus.range(query, start, end)
    mine = [s for s in result if about_us(s["metric"])]
    if mine:
        return
    check = event_check(where)
    if check is None:
        pytest.fail(f"{where}: no data for {OURS} after {traffic.answered} requests\n{query}", pytrace=False)
    print(f"{where}: empty, as it should be: {check(prometheus, traffic, expr)}")
