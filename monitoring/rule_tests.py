"""`promtool test rules` cases for the generic SLO rules, generated from the same code as the rules.

Inputs are what production scrapes: the gateway's exact counts (`infleet_gateway_slo_requests_total`, `requests`
per minute of which a share `burn x (1 - objective)` is bad) and the operator's per-deployment objective series.
A deployment first runs healthy for a full long window, then burns; each alert must fire once its long window is
all burn (and not halfway through), and a burn of 0.9x must never fire anything. Two deployments with different
objectives and budget periods under the same traffic each alert, or stay quiet, on their own objective, and their
budget left is checked against hand-computed values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from infleet.api import metrics as names
from infleet.api.durations import seconds
from infleet.monitoring.rules import (
    RUNBOOK_URL,
    alert_annotations,
    cost_annotations,
    period_seconds,
    team_budget_rules,
)
from infleet.monitoring.slo import BURN_ALERTS, COST_ALERT, TEAM_BUDGET_ALERT, TICKET, BurnAlert

REQUESTS_PER_MINUTE = 1000
NAMESPACE = "ml"


def minutes(duration: str) -> int:
    return int(seconds(duration) // 60)


def counter_values(phases: list[tuple[int, float]], step: int = 1) -> str:
    """promtool's expanding notation for a counter growing `per_minute` for `n` minutes, phase by phase, sampled
    every `step` minutes."""
    tokens, value = ["0"], 0.0
    for n, per_minute in phases:
        increment, samples = per_minute * step, n // step
        tokens.append(f"{value + increment:g}+{increment:g}x{samples - 1}")
        value += increment * samples
    return " ".join(tokens)


def constant(value: float, total_minutes: int, step: int) -> str:
    return f"{value:g}+0x{total_minutes // step}"


@dataclass(frozen=True)
class Scenario:
    deployment: str
    objective: float  # 0.99 for 99%
    healthy_minutes: int
    bad_share: float  # share of requests that miss the threshold once the burn starts
    burn_minutes: int
    sli: str = "ttft"  # the SLI that burns; tpot stays healthy
    period: str = "30d"
    step: int = 1  # minutes between samples
    namespace: str = NAMESPACE

    @property
    def labels(self) -> str:
        return f'namespace="{self.namespace}",deployment="{self.deployment}"'


def input_series(s: Scenario) -> list[dict[str, str]]:
    """The gateway's good/bad counts for two SLIs, and the operator's objective and budget period of one
    deployment."""
    total = s.healthy_minutes + s.burn_minutes
    series = [
        {"series": f"{names.DEPLOYMENT_SLO_OBJECTIVE}{{{s.labels}}}", "values": constant(s.objective, total, s.step)},
        {
            "series": f"{names.DEPLOYMENT_SLO_BUDGET_PERIOD}{{{s.labels}}}",
            "values": constant(period_seconds(s.period), total, s.step),
        },
    ]
    for sli in ("ttft", "tpot"):
        bad = REQUESTS_PER_MINUTE * (s.bad_share if sli == s.sli else 0.0)
        good_phases = [(s.healthy_minutes, float(REQUESTS_PER_MINUTE)), (s.burn_minutes, REQUESTS_PER_MINUTE - bad)]
        bad_phases = [(s.healthy_minutes, 0.0), (s.burn_minutes, bad)]
        for result, phases in (("good", good_phases), ("bad", bad_phases)):
            if result == "bad" and bad == 0:  # a deployment without a bad request has no such series at all
                continue
            labels = f'{s.labels},sli="{sli}",result="{result}"'
            series.append({"series": f"{names.SLO_REQUESTS}{{{labels}}}", "values": counter_values(phases, s.step)})
    return series


def expected(alert: BurnAlert, s: Scenario, runbook_url: str) -> dict[str, Any]:
    labels = {"namespace": s.namespace, "deployment": s.deployment, "sli": s.sli, "severity": alert.severity}
    annotations = {
        key: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)
        for key, text in alert_annotations(alert, runbook_url).items()
    }
    return {"exp_labels": labels, "exp_annotations": annotations}


def fires_within_window(
    alert: BurnAlert, objective: float = 0.99, sli: str = "ttft", runbook_url: str = RUNBOOK_URL, step: int = 1
) -> dict[str, Any]:
    """Healthy for the long window, then burning at exactly the alert's rate: silent halfway, firing at the end."""
    long = minutes(alert.long)
    name = f"{alert.severity}-{alert.long}-{objective:g}"
    s = Scenario(name, objective, long, alert.burn * (1 - objective), long + 30, sli, step=step)
    checks: list[dict[str, Any]] = [{"eval_time": f"{long + long // 2}m", "alertname": alert.name, "exp_alerts": []}]
    checks.append(
        {"eval_time": f"{2 * long + 5}m", "alertname": alert.name, "exp_alerts": [expected(alert, s, runbook_url)]}
    )
    # a faster alert must stay silent at this burn
    for other in BURN_ALERTS:
        if other.burn > alert.burn:
            checks.append({"eval_time": f"{2 * long + 5}m", "alertname": other.name, "exp_alerts": []})
    return {
        "name": f"{alert.name} fires within {alert.long} at {alert.burn:g}x (objective {objective:g}, {sli})",
        "interval": f"{step}m",
        "input_series": input_series(s),
        "alert_rule_test": checks,
    }


def never_fires(burn: float = 0.9) -> dict[str, Any]:
    """A steady burn below 1x for longer than the longest window: no alert at any time."""
    hours = 3 * 24 + 9
    s = Scenario("steady", 0.99, 60, burn * 0.01, hours * 60, step=10)
    checks = [
        {"eval_time": f"{hour}h", "alertname": alert.name, "exp_alerts": []}
        for hour in range(1, hours + 1, 2)
        for alert in BURN_ALERTS
    ]
    return {"name": f"{burn:g}x never fires", "interval": "10m", "input_series": input_series(s),
            "alert_rule_test": checks}  # fmt: skip


# Two deployments, the same traffic: 1000 requests a minute, healthy for an hour, then 1.5% of TTFTs too slow for
# an hour. Over the two hours 900 of 120,000 requests missed: an error ratio of 0.0075.
#   relaxed (objective 99%, 30d):  burn 0.015 / 0.01 = 1.5x over the last hour (no alert); budget left
#                                  1 - 0.0075 / 0.01 = 0.25; attainment 99.25%
#   strict (objective 99.9%, 7d):  burn 0.015 / 0.001 = 15x over the last hour (pages), 7.5x over 6h, 1d and 3d
#                                  (every alert); budget left 1 - 0.0075 / 0.001 = -6.5; attainment 99.25%
RELAXED = Scenario("relaxed", 0.99, 60, 0.015, 60, period="30d", namespace="team-a")
STRICT = Scenario("strict", 0.999, 60, 0.015, 60, period="7d", namespace="team-b")
HAND_COMPUTED = {  # (namespace, deployment) -> (budget left x 1000, attainment x 10000)
    ("team-a", "relaxed"): (250, 9925),
    ("team-b", "strict"): (-6500, 9925),
}


def two_deployments_same_traffic(runbook_url: str = RUNBOOK_URL) -> dict[str, Any]:
    at = "120m"
    alerts = [
        {"eval_time": at, "alertname": alert.name, "exp_alerts": [expected(alert, STRICT, runbook_url)]}
        for alert in BURN_ALERTS
    ]
    exprs = []
    for column, (series, scale) in enumerate(
        (("infleet:slo_error_budget_remaining:ratio", 1000), ("infleet:slo_good:ratio_period", 10000))
    ):
        samples = [
            {"labels": f'{{deployment="{dep}",namespace="{ns}",sli="ttft"}}', "value": values[column]}
            for (ns, dep), values in HAND_COMPUTED.items()
        ]
        exprs.append({"expr": f'round({series}{{sli="ttft"}} * {scale})', "eval_time": at, "exp_samples": samples})
    return {
        "name": "two deployments, the same traffic, each judged on its own objective and budget period",
        "interval": "1m",
        "input_series": input_series(RELAXED) + input_series(STRICT),
        "alert_rule_test": alerts,
        "promql_expr_test": exprs,
    }


def cost_over_budget(runbook_url: str = RUNBOOK_URL) -> dict[str, Any]:
    """$3/1M tokens observed for 30 minutes: above one deployment's $2 limit (fires after 15m), below another's $5,
    and a third sets no limit."""
    series = []
    for dep, limit in (("pricey", 2.0), ("roomy", 5.0), ("unbounded", None)):
        sel = f'namespace="{NAMESPACE}",deployment="{dep}"'
        series.append({"series": f"{names.DEPLOYMENT_COST}{{{sel}}}", "values": constant(3.0, 30, 1)})
        if limit is not None:
            series.append({"series": f"{names.DEPLOYMENT_COST_LIMIT}{{{sel}}}", "values": constant(limit, 30, 1)})
    labels = {"namespace": NAMESPACE, "deployment": "pricey", "severity": TICKET}
    annotations = {
        key: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)
        for key, text in cost_annotations(runbook_url).items()
    }
    return {
        "name": "the cost alert fires on a deployment's own limit only",
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [
            {"eval_time": "10m", "alertname": COST_ALERT, "exp_alerts": []},
            {"eval_time": "25m", "alertname": COST_ALERT,
             "exp_alerts": [{"exp_labels": labels, "exp_annotations": annotations}]},
        ],
    }  # fmt: skip


def team_budget_burn(runbook_url: str = RUNBOOK_URL) -> dict[str, Any]:
    """Team web spends $1 a minute against a $100 budget; two gateway replicas report the fleet's month-to-date
    spend, one a little behind the other (it read Prometheus earlier), and the higher counts: quiet at 40%, the 50%
    ticket at 60%, the 80% ticket (alone) at 90%, the page (alone) at 110%. Team batch spends more with no budget
    and never alerts."""
    series = []
    for pod, lag in (("gateway-0", 0.0), ("gateway-1", 0.2)):
        for team, per_minute in (("web", 1.0 - lag), ("batch", 5.0)):
            labels = f'{names.TEAM}="{team}",pod="{pod}"'
            series.append({"series": f"{names.TEAM_MONTH_SPEND}{{{labels}}}", "values": f"0+{per_minute:g}x120"})
        series.append({"series": f'{names.TEAM_BUDGET}{{team="web",pod="{pod}"}}', "values": constant(100, 120, 1)})
    rules = {r["labels"]["threshold"]: r for r in team_budget_rules(runbook_url) if "alert" in r}

    def fired(threshold: str, value: str) -> list[dict[str, Any]]:
        labels = {"team": "web", "threshold": threshold, "severity": rules[threshold]["labels"]["severity"]}
        annotations = {
            key: text.replace("{{ $labels.team }}", "web").replace("{{ $value | humanizePercentage }}", value)
            for key, text in rules[threshold]["annotations"].items()
        }
        return [{"exp_labels": labels, "exp_annotations": annotations}]

    checks = [("40m", []), ("60m", fired("50%", "60%")), ("90m", fired("80%", "90%")), ("110m", fired("100%", "110%"))]
    return {
        "name": "a team's budget alerts fire band by band on the fleet's spend",
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [
            {"eval_time": at, "alertname": TEAM_BUDGET_ALERT, "exp_alerts": alerts} for at, alerts in checks
        ],
    }


def promtool_cases(rule_files: list[str], runbook_url: str = RUNBOOK_URL) -> dict[str, dict[str, Any]]:
    """promtool test files by name. Page alerts are checked minute by minute; ticket alerts, whose windows are
    hours to days, every 5 minutes on 5-minute samples (a test at 1m over 6 days takes minutes of CPU)."""
    page, high, steady, slow = BURN_ALERTS
    kw: dict[str, Any] = {"runbook_url": runbook_url}
    pages = [fires_within_window(page, **kw), fires_within_window(high, **kw)]
    pages.append(fires_within_window(page, 0.995, "tpot", **kw))
    pages.append(two_deployments_same_traffic(runbook_url))
    pages.append(cost_over_budget(runbook_url))
    tickets = [fires_within_window(steady, step=5, **kw), fires_within_window(slow, step=5, **kw)]
    return {
        "burn-pages.yaml": {"rule_files": rule_files, "evaluation_interval": "1m", "tests": pages},
        "burn-tickets.yaml": {"rule_files": rule_files, "evaluation_interval": "5m", "tests": tickets},
        "burn-below-budget.yaml": {
            "rule_files": rule_files, "evaluation_interval": "10m", "tests": [never_fires(0.9)],
        },
        "team-budget-burn.yaml": {
            "rule_files": rule_files, "evaluation_interval": "1m", "tests": [team_budget_burn(runbook_url)],
        },
    }  # fmt: skip
