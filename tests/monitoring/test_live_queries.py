"""Every PromQL expression the chart ships (dashboard panels, annotations, variables, recording and alerting rules)
runs against a real Prometheus that scrapes real exporters, and returns data for both an infleet and a vLLM
deployment."""

from __future__ import annotations

import asyncio
import time

import pytest

from infleet.monitoring import promql
from infleet.monitoring.catalog import expressions, substitute
from infleet.monitoring.dashboards import dashboards
from infleet.monitoring.rules import rule_files
from infleet.operator.observation import FleetReader, attainment_from

from .conftest import DEPLOYMENTS, LivePrometheus

EXPRESSIONS = expressions()


def test_the_walk_finds_every_panel_and_rule() -> None:
    boards = dashboards().values()
    panel_targets = sum(len(panel["targets"]) for board in boards for panel in board["panels"])
    annotations = sum(len(board["annotations"]["list"]) - 1 for board in boards)  # minus Grafana's built-in
    variables = sum(1 for board in boards for v in board["templating"]["list"] if v["type"] == "query")
    rules = sum(len(g["rules"]) for f in rule_files().values() for g in f["groups"])
    assert rules == 35 and panel_targets > 20 and annotations == 4 and variables == 7
    assert len(EXPRESSIONS) == panel_targets + annotations + variables + rules


@pytest.mark.slow
@pytest.mark.parametrize(("where", "expr"), EXPRESSIONS, ids=[w for w, _ in EXPRESSIONS])
def test_expression_returns_data_for_both_engines(live_prometheus: LivePrometheus, where: str, expr: str) -> None:
    result = live_prometheus.query_range(substitute(expr), live_prometheus.started, time.time())
    assert result, f"{where}: no data for\n{expr}"
    labelled = [item["metric"] for item in result if "deployment" in item["metric"]]  # type: ignore[operator]
    if labelled and not where.startswith(
        ("slo-alerts.yaml/", "team-budgets.yaml/")
    ):  # an alert is quiet where its own objective is met
        seen = {metric["deployment"] for metric in labelled}  # type: ignore[index]
        assert seen >= DEPLOYMENTS, f"{where}: only {seen} answered\n{expr}"


@pytest.mark.slow
def test_slis_are_exact_shares_against_each_deployments_own_thresholds(live_prometheus: LivePrometheus) -> None:
    """The same traffic: half of chat's requests miss on every SLI, coder's only on TTFT (its thresholds are
    looser); the shares come from the gateway's exact counts, not from histogram buckets."""
    got = live_prometheus.query("infleet:slo_good:ratio_rate5m")
    pairs = {(r["metric"]["deployment"], r["metric"]["sli"]): float(r["value"][1]) for r in got}  # type: ignore[index]
    assert set(pairs) == {(d, s) for d in DEPLOYMENTS for s in ("ttft", "tpot", "e2e")}
    for key, share in pairs.items():
        expected = 1.0 if key[0] == "coder" and key[1] != "ttft" else 0.5
        assert share == pytest.approx(expected, abs=0.1), key


@pytest.mark.slow
def test_each_deployment_alerts_on_its_own_objective(live_prometheus: LivePrometheus) -> None:
    """chat (99%) burns at 50x: all four alerts; coder (90%) at 5x on TTFT: the two tickets, no page."""
    got = live_prometheus.query('ALERTS{alertstate="firing",alertname=~"InfleetSLO.*"}')
    firing = {(r["metric"]["alertname"], r["metric"]["deployment"]) for r in got}  # type: ignore[index]
    every = {"InfleetSLOBudgetBurnFast", "InfleetSLOBudgetBurnHigh", "InfleetSLOBudgetBurnSteady",
             "InfleetSLOBudgetBurnSlow"}  # fmt: skip
    assert {(alert, "chat") for alert in every} <= firing
    assert {a for a, d in firing if d == "coder"} == {"InfleetSLOBudgetBurnSteady", "InfleetSLOBudgetBurnSlow"}


@pytest.mark.slow
def test_each_team_alerts_in_its_own_budget_band_only(live_prometheus: LivePrometheus) -> None:
    """half (60% spent), most (90%) and over (120%) each fire their band's alert and no other; web has no budget."""
    got = live_prometheus.query('ALERTS{alertstate="firing",alertname="InfleetTeamBudgetBurn"}')
    firing = {(r["metric"]["team"], r["metric"]["threshold"], r["metric"]["severity"]) for r in got}  # type: ignore[index]
    assert firing == {("half", "50%", "warning"), ("most", "80%", "warning"), ("over", "100%", "critical")}


@pytest.mark.slow
def test_budget_left_uses_each_deployments_own_objective_and_period(live_prometheus: LivePrometheus) -> None:
    """Budget left = 1 - error ratio / (1 - objective), over the deployment's own period (all data is inside it)."""
    got = live_prometheus.query('infleet:slo_error_budget_remaining:ratio{sli="ttft"}')
    left = {r["metric"]["deployment"]: float(r["value"][1]) for r in got}  # type: ignore[index]
    assert left["chat"] == pytest.approx(1 - 0.5 / 0.01, rel=0.2)  # -49
    assert left["coder"] == pytest.approx(1 - 0.5 / 0.1, rel=0.2)  # -4


@pytest.mark.slow
def test_operator_gauges_keep_the_deployments_namespace(live_prometheus: LivePrometheus) -> None:
    """honor_labels: the gauge's namespace label wins over the operator pod's own namespace."""
    got = live_prometheus.query("infleet_deployment_replicas")
    assert {r["metric"]["namespace"] for r in got} == {"team-a", "team-b"}  # type: ignore[index]


@pytest.mark.slow
def test_tier_change_is_an_annotation_event(live_prometheus: LivePrometheus) -> None:
    """Once the first tier has been in the data for longer than the offset, only the move to int4 shows."""
    info = live_prometheus.query_range(
        'infleet_deployment_tier_info{deployment="chat"}', live_prometheus.started, time.time()
    )
    first_seen = min(float(t) for series in info for t, _ in series["values"])  # type: ignore[attr-defined]
    expr = promql.tier_changes('deployment="chat"', "5s")
    got = live_prometheus.query_range(expr, first_seen + 6, time.time())
    assert {r["metric"]["tier"] for r in got} == {"int4"}  # type: ignore[index]


@pytest.mark.slow
def test_a_scale_is_an_annotation_event(live_prometheus: LivePrometheus) -> None:
    """Replicas step every three seconds in the synthetic traffic; each step shows, valued at the new count, even
    with the interval as short as the scrape interval (one sample per window)."""
    got = live_prometheus.query_range(
        promql.scale_events('deployment="chat"', "1s"), live_prometheus.started, time.time()
    )
    values = {float(v) for series in got for _, v in series["values"]}  # type: ignore[attr-defined]
    assert got and values <= {1.0, 2.0, 3.0} and len(values) >= 2, values


@pytest.mark.slow
def test_one_query_per_interval_observes_every_deployment(live_prometheus: LivePrometheus) -> None:
    """The operator's observation loop: one PromQL query returns every quantity of both deployments (infleet and
    vLLM names), and callers within the interval share it instead of querying again."""
    reader = FleetReader(live_prometheus.url, interval=60, window="10s")

    async def twice() -> tuple:
        first = await reader.observe("team-a", "chat", replicas=2)
        second = await reader.observe("team-b", "coder", replicas=1)
        return first, second, await reader.snapshot()

    chat, coder, snap = asyncio.run(twice())
    assert reader.queries == 1
    for obs in (chat, coder):
        assert obs.missing is None
        assert obs.ttft_p99 and obs.tpot_p99 and obs.e2e_p99 and obs.tokens_per_second
        assert obs.queue_depth is not None and obs.running is not None
    # the autoscaler's own windows: requests arriving at the gateway, TTFT attainment over minutes, the token mix
    assert chat.arrival_rate and chat.arrival_rate > 0
    assert chat.ttft_attainment == pytest.approx(0.5, abs=0.2)
    assert (chat.prompt_tokens_per_request, chat.output_tokens_per_request) == pytest.approx((100, 20), rel=0.01)
    assert attainment_from(snap, "team-a", "chat")["tpot"] == pytest.approx(0.5, abs=0.2)
    assert attainment_from(snap, "team-b", "coder")["tpot"] == 1.0  # its own, looser TPOT threshold
