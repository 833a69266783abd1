"""Prometheus rules: generic, joined with the per-deployment objective series the operator exports, so that one
rule set judges every InferenceDeployment against its own SLO (no rule per deployment, no reload on a spec edit).

Inputs: the gateway's exact counts `infleet_gateway_slo_requests_total{namespace,deployment,sli,result}` (each
request against its deployment's own thresholds) and the operator's `infleet_deployment_slo_objective_ratio`,
`infleet_deployment_slo_budget_period_seconds`, `infleet_deployment_max_cost_per_million_tokens` and
`infleet_deployment_cost_per_million_tokens`.

Recorded series (labels namespace, deployment; the SLI ones also sli = ttft | tpot | e2e):
  infleet:slo_objective:ratio               the deployment's objective (0.99 for 99%)
  infleet:slo_error_budget:ratio            1 - objective: the share of requests allowed to miss
  infleet:slo_error:ratio_rate<w>           share of requests that missed the SLI's threshold over window w
  infleet:slo_good:ratio_rate<w>            1 - the above (attainment over w)
  infleet:slo_burn_rate:rate<w>             error ratio / error budget: 1 spends the budget in exactly its period
  infleet:slo_error:ratio_period            error ratio over the deployment's own budget period (spec.slo.budgetPeriod)
  infleet:slo_good:ratio_period             attainment over the budget period
  infleet:slo_error_budget_remaining:ratio  1 = untouched, 0 = spent, below 0 = overspent
"""

from __future__ import annotations

from typing import Any

from infleet.api import metrics as names
from infleet.monitoring.slo import (
    BURN_ALERTS,
    COST_ALERT,
    COST_ALERT_ANCHOR,
    COST_ALERT_FOR,
    PAGE,
    TEAM_BUDGET_ALERT,
    TEAM_BUDGET_ALERT_ANCHOR,
    TICKET,
    WINDOWS,
    BurnAlert,
)
from infleet.operator.api import BUDGET_PERIODS

RUNBOOK_URL = "https://github.com/infleet/infleet/blob/main/docs/runbooks.md"
SLIS = {"ttft": "time to first token", "tpot": "time per output token", "e2e": "end-to-end latency"}
BY = f"{names.NAMESPACE}, {names.DEPLOYMENT}"
BY_SLI = f"{BY}, sli"
OBJECTIVE = "infleet:slo_objective:ratio"
ERROR_BUDGET = "infleet:slo_error_budget:ratio"
BUDGET_REMAINING = "infleet:slo_error_budget_remaining:ratio"
ERROR_PERIOD = "infleet:slo_error:ratio_period"
GOOD_PERIOD = "infleet:slo_good:ratio_period"

Rule = dict[str, Any]
RuleFile = dict[str, Any]


def good_ratio(window: str) -> str:
    return f"infleet:slo_good:ratio_rate{window}"


def error_ratio(window: str) -> str:
    return f"infleet:slo_error:ratio_rate{window}"


def burn_rate(window: str) -> str:
    return f"infleet:slo_burn_rate:rate{window}"


def period_seconds(period: str) -> int:
    return int(period[:-1]) * 86400


def error_ratio_expr(window: str) -> str:
    """Bad requests / all requests per SLI over `window`, from exact counts; a window without requests yields no
    sample (not NaN), and a deployment with no bad request yet yields 0 (not nothing)."""
    total = f"sum by ({BY_SLI}) (increase({names.SLO_REQUESTS}[{window}]))"
    bad = f'sum by ({BY_SLI}) (increase({names.SLO_REQUESTS}{{result="bad"}}[{window}]))'
    return f"({bad} or {total} * 0)\n/\n({total} > 0)\n"


def recording_rules() -> list[Rule]:
    rules: list[Rule] = [
        {"record": OBJECTIVE, "expr": f"max by ({BY}) ({names.DEPLOYMENT_SLO_OBJECTIVE})"},
        {"record": ERROR_BUDGET, "expr": f"1 - {OBJECTIVE}"},
    ]
    for window in WINDOWS:
        rules.append({"record": error_ratio(window), "expr": error_ratio_expr(window)})
        rules.append({"record": good_ratio(window), "expr": f"1 - {error_ratio(window)}"})
        rules.append(
            {
                "record": burn_rate(window),
                # rounded to 1e-4 so that a burn of exactly 6x compares equal to 6, not 5.999999999
                "expr": f"round({error_ratio(window)} / on ({BY}) group_left {ERROR_BUDGET}, 0.0001)",
            }
        )
    # PromQL ranges are constants: one term per allowed period, each kept only for deployments that chose it
    period = f"max by ({BY}) ({names.DEPLOYMENT_SLO_BUDGET_PERIOD})"
    terms = [
        f"(\n  {error_ratio_expr(p).strip()}\n) and on ({BY}) ({period} == {period_seconds(p)})" for p in BUDGET_PERIODS
    ]
    rules.append({"record": ERROR_PERIOD, "expr": "\nor\n".join(terms) + "\n"})
    rules.append({"record": GOOD_PERIOD, "expr": f"1 - {ERROR_PERIOD}"})
    rules.append({"record": BUDGET_REMAINING, "expr": f"1 - {ERROR_PERIOD} / on ({BY}) group_left {ERROR_BUDGET}"})
    return rules


def alert_annotations(alert: BurnAlert, runbook_url: str = RUNBOOK_URL) -> dict[str, str]:
    """Annotation templates; only `$labels` is used, so tests can expand them exactly."""
    return {
        "summary": (
            "{{ $labels.namespace }}/{{ $labels.deployment }} is burning its {{ $labels.sli }} "
            f"error budget at {alert.burn:g}x"
        ),
        "description": (
            f"Over both the last {alert.long} and {alert.short}, the share of requests to "
            "{{ $labels.namespace }}/{{ $labels.deployment }} that missed its own {{ $labels.sli }} threshold was "
            f"at least {alert.burn:g}x its error budget (1 - spec.slo.objectivePercent). At this rate a 30-day "
            f"budget is gone in {30 / alert.burn:.3g} days."
        ),
        "runbook_url": f"{runbook_url}#{alert.anchor}",
    }


def cost_annotations(runbook_url: str = RUNBOOK_URL) -> dict[str, str]:
    return {
        "summary": "{{ $labels.namespace }}/{{ $labels.deployment }} costs more per 1M tokens than its budget",
        "description": (
            "For " + COST_ALERT_FOR + ", the observed $ per 1M tokens of {{ $labels.namespace }}/"
            "{{ $labels.deployment }} stayed above spec.cost.maxPerMillionTokens."
        ),
        "runbook_url": f"{runbook_url}#{COST_ALERT_ANCHOR}",
    }


def alert_rules(runbook_url: str = RUNBOOK_URL) -> list[Rule]:
    """The four alerts of the recipe, each per (namespace, deployment, sli), and the cost alert."""
    rules: list[Rule] = [
        {
            "alert": alert.name,
            "expr": (f"{burn_rate(alert.long)} >= {alert.burn:g}\nand\n{burn_rate(alert.short)} >= {alert.burn:g}\n"),
            "labels": {"severity": alert.severity},
            "annotations": alert_annotations(alert, runbook_url),
        }
        for alert in BURN_ALERTS
    ]
    rules.append(
        {
            "alert": COST_ALERT,
            "expr": (
                f"max by ({BY}) ({names.DEPLOYMENT_COST})\n> on ({BY})\nmax by ({BY}) ({names.DEPLOYMENT_COST_LIMIT})\n"
            ),
            "for": COST_ALERT_FOR,
            "labels": {"severity": TICKET},
            "annotations": cost_annotations(runbook_url),
        }
    )
    return rules


TEAM_BURN = "infleet:team_budget_burn:ratio"


def team_budget_rules(runbook_url: str = RUNBOOK_URL) -> list[Rule]:
    """Month-to-date spend over the monthly budget per team (the highest of the gateway replicas' figures: each is
    the fleet's when the gateway reads Prometheus), and one alert per band between the thresholds: 50% and 80% open a
    ticket, 100% (the team is being turned away) pages."""
    thresholds = names.BUDGET_BURN_THRESHOLDS
    spent = f"max by ({names.TEAM}) ({names.TEAM_MONTH_SPEND})"
    budget = f"(max by ({names.TEAM}) ({names.TEAM_BUDGET}) > 0)"
    rules: list[Rule] = [{"record": TEAM_BURN, "expr": f"{spent}\n/ on ({names.TEAM})\n{budget}\n"}]
    for low, high in zip(thresholds, [*thresholds[1:], None], strict=True):
        percent = f"{low * 100:g}%"
        rules.append(
            {
                "alert": TEAM_BUDGET_ALERT,
                "expr": f"{TEAM_BURN} >= {low:g}" + (f" < {high:g}" if high is not None else ""),
                "labels": {"severity": PAGE if high is None else TICKET, "threshold": percent},
                "annotations": {
                    "summary": f"team {{{{ $labels.team }}}} has spent {percent} of its monthly budget",
                    "description": (
                        "Month-to-date (UTC) the gateway counted {{ $value | humanizePercentage }} of team "
                        "{{ $labels.team }}'s monthlyBudgetDollars"
                        + (
                            "; its requests are now answered 429 until the month ends."
                            if high is None
                            else f"; at {high * 100:g}% the next alert fires, at 100% requests are refused."
                        )
                    ),
                    "runbook_url": f"{runbook_url}#{TEAM_BUDGET_ALERT_ANCHOR}",
                },
            }
        )
    return rules


def rule_files(runbook_url: str = RUNBOOK_URL) -> dict[str, RuleFile]:
    """Prometheus rule files by name; the chart wraps each in a PrometheusRule (or a ConfigMap)."""
    return {
        "slo-recording.yaml": {"groups": [{"name": "infleet-slo-recording", "rules": recording_rules()}]},
        "slo-alerts.yaml": {"groups": [{"name": "infleet-slo-alerts", "rules": alert_rules(runbook_url)}]},
        "team-budgets.yaml": {"groups": [{"name": "infleet-team-budgets", "rules": team_budget_rules(runbook_url)}]},
    }


def prometheus_rule(name: str, rules: RuleFile, namespace: str | None = None) -> dict[str, Any]:
    """A Prometheus Operator `PrometheusRule` holding one rule file's groups (for the chart or the operator)."""
    metadata: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/part-of": "infleet"}}
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule", "metadata": metadata, "spec": rules}
