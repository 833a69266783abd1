"""Grafana dashboards built in Python: a fleet overview (one table row per deployment), a per-deployment SLO
dashboard, and chargeback (spend per team).

A dashboard is plain JSON (Grafana's schema); the `Board` builder below lays panels out two to a row. Queries come
from `promql.py` (raw series) and the recorded SLO series of `rules.py`. Every SLO line is drawn from the
deployment's own objective series (exported by the operator from its spec), never a constant: each deployment's
panel shows its own threshold as a dashed red series named "SLO <namespace>/<deployment>". `configmap` wraps a
dashboard for the Grafana sidecar, which loads every ConfigMap labelled `grafana_dashboard: "1"`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from infleet.api import metrics as names
from infleet.api.metrics import DEPLOYMENT_REPLICAS
from infleet.monitoring import promql
from infleet.monitoring.rules import SLIS, TEAM_BURN, burn_rate
from infleet.monitoring.slo import BURN_ALERTS

Json = dict[str, Any]

DATASOURCE: Json = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'namespace=~"$namespace",deployment=~"$deployment"'
RATE = "$__rate_interval"
LEGEND = "{{namespace}}/{{deployment}}"
OBJECTIVE_LEGEND = "SLO " + LEGEND  # the per-deployment objective series; styled as a threshold line
OBJECTIVE_STYLE: Json = {
    "matcher": {"id": "byRegexp", "options": "/^SLO /"},
    "properties": [
        {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
        {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}},
        {"id": "custom.lineWidth", "value": 2},
    ],
}
SCHEMA_VERSION = 39


def target(expr: str, legend: str = LEGEND, ref: str = "A", instant: bool = False) -> Json:
    out = {"refId": ref, "datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "instant": instant}
    if instant:
        out["format"] = "table"
    return out


def targets(*pairs: tuple[str, str]) -> list[Json]:
    """(expr, legend) pairs with refIds A, B, ..."""
    return [target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(pairs)]


def timeseries(
    title: str,
    queries: list[Json],
    unit: str = "short",
    slo_line: float | None = None,
    description: str = "",
    objective: str | None = None,
) -> Json:
    """A time-series panel. `objective` adds each deployment's own objective series (its SLO threshold, objective
    or cost limit) as a dashed red line; `slo_line` draws a constant line, only for what is the same for every
    deployment (a burn-rate multiple of the alert recipe, budget exhausted at 0)."""
    steps: list[Json] = [{"color": "green", "value": None}]
    custom: Json = {"lineWidth": 1, "fillOpacity": 0, "showPoints": "never"}
    if slo_line is not None:
        steps.append({"color": "red", "value": slo_line})
        custom["thresholdsStyle"] = {"mode": "line"}
    overrides: list[Json] = []
    if objective is not None:
        queries = [*queries, target(objective, OBJECTIVE_LEGEND, chr(ord("A") + len(queries)))]
        overrides.append(OBJECTIVE_STYLE)
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": queries,
        "fieldConfig": {
            "defaults": {"unit": unit, "custom": custom, "thresholds": {"mode": "absolute", "steps": steps}},
            "overrides": overrides,
        },
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]}},
    }


def stat(
    title: str, queries: list[Json], unit: str = "short", text_mode: str = "value_and_name", description: str = ""
) -> Json:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": queries,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}, "textMode": text_mode},
    }


def query_variable(name: str, label: str, query: str) -> Json:
    """A multi-select variable filled by `label_values(...)`; "All" means the regex `.*`."""
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-values"},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def variables() -> list[Json]:
    return [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus"},
        query_variable("namespace", "Namespace", f"label_values({DEPLOYMENT_REPLICAS}, namespace)"),
        query_variable(
            "deployment", "Deployment", f'label_values({DEPLOYMENT_REPLICAS}{{namespace=~"$namespace"}}, deployment)'
        ),
    ]


def annotation(name: str, expr: str, text: str, color: str) -> Json:
    return {
        "name": name,
        "datasource": DATASOURCE,
        "enable": True,
        "expr": expr,
        "iconColor": color,
        "titleFormat": name,
        "textFormat": text,
        "tagKeys": "namespace,deployment",
        "useValueForTime": False,
    }


@dataclass
class Board:
    """Panels in reading order; `add` places each one (full width or two to a row)."""

    uid: str
    title: str
    description: str
    panels: list[Json] = field(default_factory=list)
    annotations: list[Json] = field(default_factory=list)
    extra_variables: list[Json] = field(default_factory=list)
    _x: int = 0
    _y: int = 0

    def add(self, panel: Json, width: int = 12, height: int = 8) -> None:
        if self._x + width > 24:
            self._x, self._y = 0, self._y + height
        panel = {"id": len(self.panels) + 1, "gridPos": {"x": self._x, "y": self._y, "w": width, "h": height}, **panel}
        self.panels.append(panel)
        self._x += width

    def json(self) -> Json:
        builtin = {
            "builtIn": 1,
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True,
            "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts",
            "type": "dashboard",
        }
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["infleet"],
            "editable": True,
            "schemaVersion": SCHEMA_VERSION,
            "version": 1,
            "time": {"from": "now-6h", "to": "now"},
            "refresh": "30s",
            "timezone": "",
            "templating": {"list": variables()[:1] + self.extra_variables + variables()[1:]},
            "annotations": {"list": [builtin, *self.annotations]},
            "panels": self.panels,
        }


def table(title: str, columns: list[tuple[str, str, str]], description: str = "", sort_by: str = "Budget left") -> Json:
    """One row per (namespace, deployment), or whatever labels the queries keep: each column an instant query
    (title, expr, unit), merged on the labels."""
    queries = [target(expr, "", chr(ord("A") + i), instant=True) for i, (_, expr, _) in enumerate(columns)]
    rename = {f"Value #{chr(ord('A') + i)}": name for i, (name, _, _) in enumerate(columns)}
    overrides = [
        {"matcher": {"id": "byName", "options": name}, "properties": [{"id": "unit", "value": unit}]}
        for name, _, unit in columns
    ]
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": queries,
        "transformations": [
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {"excludeByName": {"Time": True}, "renameByName": rename}},
        ],
        "fieldConfig": {"defaults": {}, "overrides": overrides},
        "options": {"showHeader": True, "sortBy": [{"displayName": sort_by, "desc": sort_by != "Budget left"}]},
    }


def state_timeline(title: str, queries: list[Json]) -> Json:
    return {
        "type": "state-timeline",
        "title": title,
        "datasource": DATASOURCE,
        "targets": queries,
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {"showValue": "never", "mergeValues": True},
    }


def fleet_table() -> Json:
    return table(
        "Deployments against their own SLO",
        [
            ("Objective", promql.objective(SEL), "percentunit"),
            ("Attainment (budget period)", f"min by (namespace, deployment) ({promql.attainment('period', SEL)})",
             "percentunit"),
            ("Budget left", f"min by (namespace, deployment) ({promql.budget_left(SEL)})", "percentunit"),
            ("$ / 1M tokens", promql.cost_per_million_tokens(SEL), "currencyUSD"),
            ("$ / 1M limit", promql.cost_limit(SEL), "currencyUSD"),
            ("Replicas", promql.replicas(SEL), "short"),
            ("Tier", promql.tier(SEL), "short"),
        ],
        description="Attainment and budget left are the worst SLI of each deployment, over its own budget period "
        "(spec.slo.budgetPeriod); the Tier column's value is 1, the tier is its `tier` label.",
    )  # fmt: skip


def scale_and_tier_annotations() -> list[Json]:
    return [
        annotation("Scale", promql.scale_events(SEL, "$__interval"), "{{namespace}}/{{deployment}} replicas", "blue"),
        annotation(
            "Tier change", promql.tier_changes(SEL, "$__interval"), "{{namespace}}/{{deployment}} -> {{tier}}", "orange"
        ),
    ]


def latency_panel(sli: str) -> Json:
    return timeseries(
        f"p99 {SLIS[sli]}",
        [target(promql.latency_quantile(sli, SEL, RATE))],
        unit="s",
        objective=promql.slo_threshold(sli, SEL),
        description="The dashed red line is each deployment's own threshold (spec.slo); the p99 is read off the "
        "engine's histogram, attainment (the SLO dashboard) from exact per-request counts.",
    )


def fleet_overview() -> Json:
    board = Board(
        "infleet-fleet", "infleet / Fleet overview", "Per deployment: its own SLO and budget, capacity, latency, cost."
    )
    board.annotations += scale_and_tier_annotations()
    board.add(fleet_table(), width=24)
    board.add(
        timeseries(
            "Replicas (current, desired)",
            targets((promql.replicas(SEL), LEGEND), (promql.desired_replicas(SEL), LEGEND + " desired")),
        )
    )
    board.add(stat("Tier", [target(promql.tier(SEL), "{{deployment}}: {{tier}}")], text_mode="name"), width=6)
    board.add(stat("$ / 1M tokens", [target(promql.cost_per_million_tokens(SEL))], unit="currencyUSD"), width=6)
    for sli in SLIS:
        board.add(latency_panel(sli))
    board.add(
        timeseries(
            "Error budget remaining (budget period)",
            [target(promql.budget_left(SEL), LEGEND + " {{sli}}")],
            unit="percentunit",
            slo_line=0.0,
        )
    )
    board.add(
        timeseries(
            "Queue depth (waiting, running)",
            targets((promql.queue_depth(SEL), LEGEND + " waiting"), (promql.running(SEL), LEGEND + " running")),
        )
    )
    board.add(
        timeseries(
            "Tokens / s",
            targets(
                (promql.generation_tokens_per_second(SEL, RATE), LEGEND + " generated"),
                (promql.prompt_tokens_per_second(SEL, RATE), LEGEND + " prompt"),
            ),
            unit="short",
        )
    )
    board.add(timeseries("Requests / s", [target(promql.request_rate(SEL, RATE))], unit="reqps"))
    board.add(timeseries("KV-cache use", [target(promql.kv_cache_usage(SEL))], unit="percentunit"))
    board.add(
        timeseries("Prefix-cache hit rate", [target(promql.prefix_cache_hit_rate(SEL, RATE))], unit="percentunit")
    )
    return board.json()


def slo_overview() -> Json:
    board = Board(
        "infleet-slo",
        "infleet / Deployment SLO",
        "One deployment (or several) against its own spec.slo: attainment against its objective, error budget left "
        "over its budget period, the burn rates of the multi-window alerts, cost against its limit.",
    )
    board.annotations += scale_and_tier_annotations()
    legend = LEGEND + " {{sli}}"
    for sli in SLIS:
        board.add(latency_panel(sli), width=8)
    board.add(
        timeseries(
            "Requests within the SLO (5m, 1h)",
            targets((promql.attainment("5m", SEL), legend + " 5m"), (promql.attainment("1h", SEL), legend + " 1h")),
            unit="percentunit",
            objective=promql.objective(SEL),
            description="Exact: each request judged by the gateway against the deployment's own thresholds.",
        )
    )
    board.add(
        timeseries(
            "Attainment over the budget period",
            [target(promql.attainment("period", SEL), legend)],
            unit="percentunit",
            objective=promql.objective(SEL),
        )
    )
    board.add(
        timeseries(
            "Error budget remaining (budget period)",
            [target(promql.budget_left(SEL), legend)],
            unit="percentunit",
            slo_line=0.0,
            description="1 = untouched, 0 = spent (the red line), below 0 = overspent.",
        )
    )
    for alert in BURN_ALERTS:
        board.add(
            timeseries(
                f"Burn rate {alert.long} / {alert.short} ({alert.severity} at {alert.burn:g}x)",
                targets(
                    (series_of(burn_rate(alert.long)), legend + f" {alert.long}"),
                    (series_of(burn_rate(alert.short)), legend + f" {alert.short}"),
                ),
                slo_line=alert.burn,
                description=f"{alert.name} fires when both lines are at or above {alert.burn:g} (the multiple of "
                "each deployment's own error budget).",
            )
        )
    board.add(
        timeseries(
            "$ / 1M tokens",
            [target(promql.cost_per_million_tokens(SEL))],
            unit="currencyUSD",
            objective=promql.cost_limit(SEL),
            description="The dashed red line is spec.cost.maxPerMillionTokens, where set.",
        )
    )
    board.add(timeseries("Spend per hour", [target(promql.spend_per_hour(SEL, RATE))], unit="currencyUSD"))
    board.add(
        timeseries(
            "Replicas (current, desired)",
            targets((promql.replicas(SEL), LEGEND), (promql.desired_replicas(SEL), LEGEND + " desired")),
            description="desired is the autoscaler's decision; under scaling.mode: advisory it is never applied, so"
            " the gap between the lines is what the autoscaler would have done.",
        )
    )
    board.add(
        state_timeline(
            "Tier (current, desired)",
            targets((promql.tier(SEL), LEGEND + " {{tier}}"), (promql.desired_tier(SEL), LEGEND + " desired {{tier}}")),
        )
    )
    board.add(
        timeseries(
            "Firing SLO and cost alerts",
            [target(f'ALERTS{{alertname=~"Infleet.*",alertstate="firing",{SEL}}}', "{{alertname}} " + legend)],
        ),
        width=24,
    )
    return board.json()


TEAM_SEL = 'team=~"$team"'
SPEND_SEL = f"{TEAM_SEL},{SEL}"
BY_BILL = "team, namespace, deployment, model"


def chargeback() -> Json:
    """Who spends what: each team's month-to-date spend against its budget, and spend, tokens, refusals and cache
    hits by team, deployment and model (gateway/budgets.py, gateway/cache.py)."""
    board = Board(
        "infleet-chargeback",
        "infleet / Chargeback",
        "Spend per team, deployment and model as the gateway metered it from the answers' usage fields, priced at "
        "each deployment's status.costPerMillionTokens; month-to-date spend against each team's monthly budget; "
        "requests turned away by token rate or budget; response-cache hits. `infleet report chargeback --month "
        "YYYY-MM` exports the same figures as CSV.",
        extra_variables=[query_variable("team", "Team", f"label_values({names.TEAM_SPEND}, team)")],
    )
    spent = f"max by (team) ({names.TEAM_MONTH_SPEND}{{{TEAM_SEL}}})"
    board.add(
        table(
            "Teams this month (UTC)",
            [
                ("Spent", spent, "currencyUSD"),
                ("Budget", f"max by (team) ({names.TEAM_BUDGET}{{{TEAM_SEL}}})", "currencyUSD"),
                ("Share spent", f"{TEAM_BURN}{{{TEAM_SEL}}}", "percentunit"),
            ],
            description="Month-to-date spend the budget is checked against (the fleet's when the gateway reads "
            "Prometheus); budget alerts fire at 50%, 80% and 100% of it.",
            sort_by="Spent",
        ),
        width=24,
    )
    board.add(
        timeseries(
            "Spend per hour by team",
            [target(f"sum by (team) (rate({names.TEAM_SPEND}{{{SPEND_SEL}}}[{RATE}])) * 3600", "{{team}}")],
            unit="currencyUSD",
        )
    )
    board.add(
        timeseries(
            "Tokens per minute by team",
            [
                target(
                    f"sum by (team, kind) (rate({names.TEAM_TOKENS}{{{SPEND_SEL}}}[{RATE}])) * 60", "{{team}} {{kind}}"
                )
            ],
            description="The rates the per-team inputTokensPerMinute and outputTokensPerMinute limits apply to.",
        )
    )
    board.add(
        table(
            "Spend over the time range by team, deployment and model",
            [
                ("Spend", f"sum by ({BY_BILL}) (increase({names.TEAM_SPEND}{{{SPEND_SEL}}}[$__range]))",
                 "currencyUSD"),
                ("Input tokens", f'sum by ({BY_BILL}) (increase({names.TEAM_TOKENS}{{{SPEND_SEL},kind="input"}}'
                 "[$__range]))", "short"),
                ("Output tokens", f'sum by ({BY_BILL}) (increase({names.TEAM_TOKENS}{{{SPEND_SEL},kind="output"}}'
                 "[$__range]))", "short"),
            ],
            sort_by="Spend",
        ),
        width=24,
    )  # fmt: skip
    board.add(
        timeseries(
            "Requests refused by team and reason",
            [
                target(
                    f"sum by (team, reason) (increase({names.TEAM_REFUSED}{{{TEAM_SEL}}}[{RATE}]))",
                    "{{team}} {{reason}}",
                )
            ],
            description="429s: input_tokens or output_tokens (over a per-minute limit), monthly_budget (spent).",
        )
    )
    lookups = f"sum by ({promql.by()}) (rate({names.RESPONSE_CACHE_LOOKUPS}{{{SEL}}}[{RATE}]))"
    hits = f'sum by ({promql.by()}) (rate({names.RESPONSE_CACHE_LOOKUPS}{{{SEL},result="hit"}}[{RATE}]))'
    board.add(
        timeseries(
            "Response-cache hit rate",
            [target(f"{hits} / ({lookups} > 0)")],
            unit="percentunit",
            description="Hits among the deterministic requests looked up (spec.gateway.responseCache); a hit is "
            "answered by the gateway and costs nothing.",
        )
    )
    board.add(
        timeseries(
            "Unpriced tokens per minute",
            [
                target(
                    f"sum by (team, namespace, deployment) (rate({names.TEAM_UNPRICED_TOKENS}{{{SPEND_SEL}}}[{RATE}]))"
                    " * 60",
                    "{{team}} " + LEGEND,
                )
            ],
            description="Tokens of deployments without status.costPerMillionTokens yet (no Prometheus for the "
            "operator, or no traffic observed): counted, not in spend.",
        )
    )
    return board.json()


def series_of(name: str) -> str:
    return f"{name}{{{SEL}}}"


def dashboards() -> dict[str, Json]:
    """Dashboard JSON files by name."""
    return {"fleet-overview.json": fleet_overview(), "slo.json": slo_overview(), "chargeback.json": chargeback()}


def configmap(filename: str, dashboard: Json, namespace: str | None = None) -> Json:
    """A ConfigMap the Grafana sidecar picks up (label `grafana_dashboard: "1"`)."""
    metadata: Json = {
        "name": "infleet-dashboard-" + filename.removesuffix(".json"),
        "labels": {"grafana_dashboard": "1", "app.kubernetes.io/part-of": "infleet"},
    }
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": {filename: json.dumps(dashboard, indent=2)},
    }
