"""Grafana dashboards built in Python: a fleet overview and an SLO (error budget) dashboard.

A dashboard is plain JSON (Grafana's schema); the `Board` builder below lays panels out two to a row. Queries come
from `promql.py` (raw series) and the recorded SLO series of `rules.py`. `configmap` wraps a dashboard for the
Grafana sidecar, which loads every ConfigMap labelled `grafana_dashboard: "1"`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from infleet.monitoring import promql
from infleet.monitoring.names import DEPLOYMENT_REPLICAS
from infleet.monitoring.rules import SLIS, burn_rate, good_ratio
from infleet.monitoring.slo import BUDGET_PERIOD, BURN_ALERTS, DEFAULT_TARGETS, SLOTargets

Json = dict[str, Any]

DATASOURCE: Json = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'namespace=~"$namespace",deployment=~"$deployment"'
RATE = "$__rate_interval"
LEGEND = "{{namespace}}/{{deployment}}"
SCHEMA_VERSION = 39


def target(expr: str, legend: str = LEGEND, ref: str = "A", instant: bool = False) -> Json:
    return {"refId": ref, "datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "instant": instant}


def targets(*pairs: tuple[str, str]) -> list[Json]:
    """(expr, legend) pairs with refIds A, B, ..."""
    return [target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(pairs)]


def timeseries(
    title: str, queries: list[Json], unit: str = "short", slo_line: float | None = None, description: str = ""
) -> Json:
    """A time-series panel; `slo_line` draws a red threshold line (the SLO or the alert's burn rate)."""
    steps: list[Json] = [{"color": "green", "value": None}]
    custom: Json = {"lineWidth": 1, "fillOpacity": 0, "showPoints": "never"}
    if slo_line is not None:
        steps.append({"color": "red", "value": slo_line})
        custom["thresholdsStyle"] = {"mode": "line"}
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": queries,
        "fieldConfig": {
            "defaults": {"unit": unit, "custom": custom, "thresholds": {"mode": "absolute", "steps": steps}},
            "overrides": [],
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
            "templating": {"list": variables()},
            "annotations": {"list": [builtin, *self.annotations]},
            "panels": self.panels,
        }


def fleet_overview(targets_: SLOTargets = DEFAULT_TARGETS) -> Json:
    board = Board(
        "infleet-fleet", "infleet / Fleet overview", "Per deployment: capacity, latency against the SLO, cost."
    )
    board.annotations += [
        annotation("Scale", promql.scale_events(SEL, "$__interval"), "{{namespace}}/{{deployment}} replicas", "blue"),
        annotation(
            "Tier change", promql.tier_changes(SEL, "$__interval"), "{{namespace}}/{{deployment}} -> {{tier}}", "orange"
        ),
    ]
    board.add(
        timeseries(
            "Replicas (current, desired)",
            targets((promql.replicas(SEL), LEGEND), (promql.desired_replicas(SEL), LEGEND + " desired")),
        )
    )
    board.add(stat("Tier", [target(promql.tier(SEL), "{{deployment}}: {{tier}}")], text_mode="name"), width=6)
    board.add(stat("$ / 1M tokens", [target(promql.cost_per_million_tokens(SEL))], unit="currencyUSD"), width=6)
    for sli, threshold in (("ttft", targets_.ttft), ("tpot", targets_.tpot), ("e2e", targets_.e2e)):
        board.add(
            timeseries(
                f"p99 {SLIS[sli]}",
                [target(promql.latency_quantile(sli, SEL, RATE))],
                unit="s",
                slo_line=threshold,
                description="The red line is the fleet's default SLO threshold.",
            )
        )
    board.add(
        timeseries(
            f"Error budget remaining ({BUDGET_PERIOD})",
            [target(f"infleet:slo_error_budget_remaining:ratio{{{SEL}}}", LEGEND + " {{sli}}")],
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


def slo_overview(targets_: SLOTargets = DEFAULT_TARGETS) -> Json:
    board = Board(
        "infleet-slo",
        "infleet / SLO error budgets",
        f"Burn rates per window of the multi-window alerts; objective {targets_.objective * 100:g}% of requests.",
    )
    legend = LEGEND + " {{sli}}"
    board.add(
        timeseries(
            "Requests within the SLO (5m, 1h)",
            targets((good_ratio("5m", SEL), legend + " 5m"), (good_ratio("1h", SEL), legend + " 1h")),
            unit="percentunit",
            slo_line=targets_.objective,
        )
    )
    board.add(
        timeseries(
            f"Error budget remaining ({BUDGET_PERIOD})",
            [target(f"infleet:slo_error_budget_remaining:ratio{{{SEL}}}", legend)],
            unit="percentunit",
            slo_line=0.0,
        )
    )
    for alert in BURN_ALERTS:
        board.add(
            timeseries(
                f"Burn rate {alert.long} / {alert.short} ({alert.severity} at {alert.burn:g}x)",
                targets(
                    (burn_rate(alert.long, SEL), legend + f" {alert.long}"),
                    (burn_rate(alert.short, SEL), legend + f" {alert.short}"),
                ),
                slo_line=alert.burn,
                description=f"{alert.name} fires when both lines are at or above {alert.burn:g}.",
            )
        )
    board.add(
        timeseries(
            "Firing SLO alerts",
            [target(f'ALERTS{{alertname=~"InfleetSLO.*",alertstate="firing",{SEL}}}', "{{alertname}} " + legend)],
        ),
        width=24,
    )
    return board.json()


def dashboards(targets_: SLOTargets = DEFAULT_TARGETS) -> dict[str, Json]:
    """Dashboard JSON files by name."""
    return {"fleet-overview.json": fleet_overview(targets_), "slo.json": slo_overview(targets_)}


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
