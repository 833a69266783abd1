"""Every PromQL expression the chart ships (dashboard panels, annotations, variables, recording and alerting rules)
runs against a real Prometheus that scrapes real exporters, and returns data for both an infleet and a vLLM
deployment."""

from __future__ import annotations

import time

import pytest

from infleet.monitoring import promql
from infleet.monitoring.catalog import expressions, substitute
from infleet.monitoring.dashboards import dashboards
from infleet.monitoring.rules import rule_files

from .conftest import DEPLOYMENTS, LivePrometheus

EXPRESSIONS = expressions()


def test_the_walk_finds_every_panel_and_rule() -> None:
    boards = dashboards().values()
    panel_targets = sum(len(panel["targets"]) for board in boards for panel in board["panels"])
    annotations = sum(len(board["annotations"]["list"]) - 1 for board in boards)  # minus Grafana's built-in
    variables = sum(1 for board in boards for v in board["templating"]["list"] if v["type"] == "query")
    rules = sum(len(g["rules"]) for f in rule_files().values() for g in f["groups"])
    assert rules == 34 and panel_targets > 20 and annotations == 2 and variables == 4
    assert len(EXPRESSIONS) == panel_targets + annotations + variables + rules


@pytest.mark.slow
@pytest.mark.parametrize(("where", "expr"), EXPRESSIONS, ids=[w for w, _ in EXPRESSIONS])
def test_expression_returns_data_for_both_engines(live_prometheus: LivePrometheus, where: str, expr: str) -> None:
    result = live_prometheus.query_range(substitute(expr), live_prometheus.started, time.time())
    assert result, f"{where}: no data for\n{expr}"
    labelled = [item["metric"] for item in result if "deployment" in item["metric"]]  # type: ignore[operator]
    if labelled:
        seen = {metric["deployment"] for metric in labelled}  # type: ignore[index]
        assert seen >= DEPLOYMENTS, f"{where}: only {seen} answered\n{expr}"


@pytest.mark.slow
def test_slis_measure_the_share_of_fast_requests(live_prometheus: LivePrometheus) -> None:
    """Half the requests beat every threshold (TTFT 2 s falls between bucket edges and is interpolated)."""
    got = live_prometheus.query("infleet:slo_good:ratio_rate5m")
    pairs = {(r["metric"]["deployment"], r["metric"]["sli"]): float(r["value"][1]) for r in got}  # type: ignore[index]
    assert set(pairs) == {(d, s) for d in DEPLOYMENTS for s in ("ttft", "tpot", "e2e")}
    for key, share in pairs.items():
        assert 0.35 <= share <= 0.65, f"{key}: {share}"


@pytest.mark.slow
def test_burning_deployments_fire_every_burn_alert(live_prometheus: LivePrometheus) -> None:
    got = live_prometheus.query('ALERTS{alertstate="firing"}')
    firing = {(r["metric"]["alertname"], r["metric"]["deployment"]) for r in got}  # type: ignore[index]
    for alert in ("InfleetSLOBudgetBurnFast", "InfleetSLOBudgetBurnHigh", "InfleetSLOBudgetBurnSteady",
                  "InfleetSLOBudgetBurnSlow"):  # fmt: skip
        assert {(alert, d) for d in DEPLOYMENTS} <= firing


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
