"""`promtool test rules` cases for the burn-rate alerts, generated from the same code as the rules.

Synthetic latency histograms burn the error budget at a chosen multiple: for each minute, `requests` requests of
which a share `burn x (1 - objective)` miss the threshold (they land in the last finite bucket, the rest in the
first). A deployment first runs healthy for a full long window, then burns; each alert must fire once its long
window is all burn (and not halfway through), and a burn of 0.9x must never fire anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from infleet.monitoring.names import INFLEET, VLLM, EngineMetrics, Histogram, le
from infleet.monitoring.rules import RUNBOOK_URL, alert_annotations
from infleet.monitoring.slo import BURN_ALERTS, DEFAULT_TARGETS, BurnAlert, SLOTargets

REQUESTS_PER_MINUTE = 1000
NAMESPACE = "ml"
_UNITS = {"m": 1, "h": 60, "d": 1440}


def minutes(duration: str) -> int:
    return int(duration[:-1]) * _UNITS[duration[-1]]


def counter_values(phases: list[tuple[int, float]], step: int = 1) -> str:
    """promtool's expanding notation for a counter growing `per_minute` for `n` minutes, phase by phase, sampled
    every `step` minutes."""
    tokens, value = ["0"], 0.0
    for n, per_minute in phases:
        increment, samples = per_minute * step, n // step
        tokens.append(f"{value + increment:g}+{increment:g}x{samples - 1}")
        value += increment * samples
    return " ".join(tokens)


@dataclass(frozen=True)
class Scenario:
    deployment: str
    engine: EngineMetrics
    sli: str  # which histogram misses its threshold; the other two stay healthy
    healthy_minutes: int
    burn: float
    burn_minutes: int
    step: int = 1  # minutes between samples


def input_series(s: Scenario, targets: SLOTargets) -> list[dict[str, str]]:
    """Buckets and counts of the three latency histograms of one deployment."""
    series = []
    for sli in ("ttft", "tpot", "e2e"):
        hist: Histogram = getattr(s.engine, sli)
        bad_share = s.burn * targets.budget if sli == s.sli else 0.0
        bad = REQUESTS_PER_MINUTE * bad_share
        good = REQUESTS_PER_MINUTE - bad
        healthy = (s.healthy_minutes, float(REQUESTS_PER_MINUTE))
        labels = f'namespace="{NAMESPACE}",deployment="{s.deployment}"'
        edges = sorted(hist.buckets)
        for edge in edges:
            per_minute = good if edge < edges[-1] else REQUESTS_PER_MINUTE
            phases = [healthy, (s.burn_minutes, per_minute)]
            series.append(
                {"series": f'{hist.bucket}{{{labels},le="{le(edge)}"}}', "values": counter_values(phases, s.step)}
            )
        phases = [healthy, (s.burn_minutes, float(REQUESTS_PER_MINUTE))]
        series.append({"series": f'{hist.bucket}{{{labels},le="+Inf"}}', "values": counter_values(phases, s.step)})
        series.append({"series": f"{hist.count}{{{labels}}}", "values": counter_values(phases, s.step)})
    return series


def expected(alert: BurnAlert, s: Scenario, targets: SLOTargets, runbook_url: str) -> dict[str, Any]:
    labels = {"namespace": NAMESPACE, "deployment": s.deployment, "sli": s.sli, "severity": alert.severity}
    annotations = {
        key: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)
        for key, text in alert_annotations(alert, targets, runbook_url).items()
    }
    return {"exp_labels": labels, "exp_annotations": annotations}


def fires_within_window(
    alert: BurnAlert, engine: EngineMetrics = INFLEET, sli: str = "ttft", targets: SLOTargets = DEFAULT_TARGETS,
    runbook_url: str = RUNBOOK_URL, step: int = 1,
) -> dict[str, Any]:  # fmt: skip
    """Healthy for the long window, then burning at exactly the alert's rate: silent halfway, firing at the end."""
    long = minutes(alert.long)
    s = Scenario(f"{engine.engine}-{alert.severity}-{alert.long}", engine, sli, long, alert.burn, long + 30, step)
    checks: list[dict[str, Any]] = [{"eval_time": f"{long + long // 2}m", "alertname": alert.name, "exp_alerts": []}]
    checks.append(
        {
            "eval_time": f"{2 * long + 5}m",
            "alertname": alert.name,
            "exp_alerts": [expected(alert, s, targets, runbook_url)],
        }
    )
    # a faster alert must stay silent at this burn
    for other in BURN_ALERTS:
        if other.burn > alert.burn:
            checks.append({"eval_time": f"{2 * long + 5}m", "alertname": other.name, "exp_alerts": []})
    return {"name": f"{alert.name} fires within {alert.long} at {alert.burn:g}x ({engine.engine}, {sli})",
            "interval": f"{step}m", "input_series": input_series(s, targets), "alert_rule_test": checks}  # fmt: skip


def never_fires(burn: float = 0.9, targets: SLOTargets = DEFAULT_TARGETS) -> dict[str, Any]:
    """A steady burn below 1x for longer than the longest window: no alert at any time."""
    hours = 3 * 24 + 9
    s = Scenario("steady", INFLEET, "ttft", 60, burn, hours * 60)
    checks = [
        {"eval_time": f"{hour}h", "alertname": alert.name, "exp_alerts": []}
        for hour in range(1, hours + 1, 2)
        for alert in BURN_ALERTS
    ]
    return {"name": f"{burn:g}x never fires", "interval": "1m", "input_series": input_series(s, targets),
            "alert_rule_test": checks}  # fmt: skip


def promtool_cases(
    rule_files: list[str], targets: SLOTargets = DEFAULT_TARGETS, runbook_url: str = RUNBOOK_URL
) -> dict[str, dict[str, Any]]:
    """promtool test files by name. Page alerts are checked minute by minute; ticket alerts, whose windows are
    hours to days, every 5 minutes on 5-minute samples (a test at 1m over 6 days takes minutes of CPU)."""
    page, high, steady, slow = BURN_ALERTS
    kw: dict[str, Any] = {"targets": targets, "runbook_url": runbook_url}
    pages = [fires_within_window(page, **kw), fires_within_window(high, **kw)]
    pages.append(fires_within_window(page, VLLM, "tpot", **kw))
    pages.append(fires_within_window(page, INFLEET, "e2e", **kw))
    tickets = [fires_within_window(steady, step=5, **kw), fires_within_window(slow, step=5, **kw)]
    return {
        "burn-pages.yaml": {"rule_files": rule_files, "evaluation_interval": "1m", "tests": pages},
        "burn-tickets.yaml": {"rule_files": rule_files, "evaluation_interval": "5m", "tests": tickets},
        "burn-below-budget.yaml": {
            "rule_files": rule_files, "evaluation_interval": "10m", "tests": [never_fires(0.9, targets)],
        },
    }  # fmt: skip
