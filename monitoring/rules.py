"""Prometheus rules: per-deployment SLIs recorded from the latency histograms, and burn-rate alerts on them.

Recorded series (labels namespace, deployment, sli = ttft | tpot | e2e):
  infleet:slo_good:ratio_rate<w>            share of requests within the SLI's threshold over window w
  infleet:slo_burn_rate:rate<w>             (1 - good) / (1 - objective): 1 spends the 30-day budget in 30 days
  infleet:slo_good:ratio_rate30d            the 5m ratio averaged over the budget period
  infleet:slo_error_budget_remaining:ratio  1 = untouched, 0 = spent, below 0 = overspent

A threshold that falls between two bucket edges (2 s TTFT against edges 1.0 and 2.5) is interpolated linearly
between them, the same assumption `histogram_quantile` makes.
"""

from __future__ import annotations

from typing import Any

from infleet.monitoring.names import ENGINES, EngineMetrics, Histogram, by, le
from infleet.monitoring.slo import BUDGET_PERIOD, BURN_ALERTS, DEFAULT_TARGETS, WINDOWS, BurnAlert, SLOTargets

RUNBOOK_URL = "https://github.com/infleet/infleet/blob/main/docs/runbooks.md"
SLIS = {"ttft": "time to first token", "tpot": "time per output token", "e2e": "end-to-end latency"}

Rule = dict[str, Any]
RuleFile = dict[str, Any]


def good_ratio(window: str, selector: str = "") -> str:
    return f"infleet:slo_good:ratio_rate{window}{{{selector}}}" if selector else f"infleet:slo_good:ratio_rate{window}"


def burn_rate(window: str, selector: str = "") -> str:
    return f"infleet:slo_burn_rate:rate{window}{{{selector}}}" if selector else f"infleet:slo_burn_rate:rate{window}"


def _series(metric: str, matchers: str) -> str:
    return f"{metric}{{{matchers}}}" if matchers else metric


def _rate_sum(metric: str, matchers: str, window: str) -> str:
    return f"sum by ({by()}) (rate({_series(metric, matchers)}[{window}]))"


def good_rate(hist: Histogram, threshold: float, window: str, selector: str = "") -> str:
    """Requests per second within `threshold`, interpolated between the bucket edges around it."""
    edges = sorted(hist.buckets)
    if threshold > edges[-1]:
        raise ValueError(f"{hist.name}: threshold {threshold}s is above its largest bucket edge {edges[-1]}s")
    prefix = f"{selector}," if selector else ""

    def bucket(edge: float) -> str:
        return _rate_sum(hist.bucket, f'{prefix}le="{le(edge)}"', window)

    if threshold in edges:
        return bucket(threshold)
    hi = next(edge for edge in edges if edge > threshold)
    lower = [edge for edge in edges if edge < threshold]
    if not lower:  # below the first edge: the first bucket spreads from 0
        return f"{bucket(hi)} * {threshold / hi:.6g}"
    lo = lower[-1]
    share = (threshold - lo) / (hi - lo)
    return f"({bucket(lo)} * {1 - share:.6g} + {bucket(hi)} * {share:.6g})"


def sli_expr(
    sli: str, threshold: float, window: str, selector: str = "", engines: tuple[EngineMetrics, ...] = ENGINES
) -> str:
    """Share of requests within `threshold` per deployment, for whichever engine the deployment runs.

    Windows without requests yield no sample (not NaN), so averages over the budget period stay defined.
    """
    parts = []
    for engine in engines:
        hist: Histogram = getattr(engine, sli)
        total = _rate_sum(hist.count, selector, window)
        parts.append(f"(\n  {good_rate(hist, threshold, window, selector)}\n/\n  ({total} > 0)\n)")
    return "\nor\n".join(parts) + "\n"


def recording_rules(targets: SLOTargets = DEFAULT_TARGETS, selector: str = "") -> list[Rule]:
    """SLIs for every window and threshold, then burn rates and the budget left.

    `selector` (e.g. `namespace="ml",deployment="chat"`) narrows the rules to some deployments, so an
    InferenceDeployment with its own SLO gets its own rule group alongside the fleet defaults.
    """
    rules: list[Rule] = []
    for sli, threshold in targets.thresholds().items():
        for window in WINDOWS:
            rules.append(
                {
                    "record": f"infleet:slo_good:ratio_rate{window}",
                    "expr": sli_expr(sli, threshold, window, selector),
                    "labels": {"sli": sli},
                }
            )
    for window in WINDOWS:
        rules.append(
            {
                "record": f"infleet:slo_burn_rate:rate{window}",
                # rounded to 1e-4 so that a burn of exactly 6x compares equal to 6, not 5.999999999
                "expr": f"round((1 - {good_ratio(window, selector)}) / {targets.budget:g}, 0.0001)",
            }
        )
    rules.append(
        {
            "record": f"infleet:slo_good:ratio_rate{BUDGET_PERIOD}",
            "expr": f"avg_over_time({good_ratio('5m', selector)}[{BUDGET_PERIOD}])",
        }
    )
    rules.append(
        {
            "record": "infleet:slo_error_budget_remaining:ratio",
            "expr": f"1 - (1 - {good_ratio(BUDGET_PERIOD, selector)}) / {targets.budget:g}",
        }
    )
    return rules


def alert_annotations(alert: BurnAlert, targets: SLOTargets, runbook_url: str = RUNBOOK_URL) -> dict[str, str]:
    """Annotation templates; only `$labels` is used, so tests can expand them exactly."""
    days = 30 / alert.burn
    error_share = alert.burn * targets.budget * 100
    return {
        "summary": (
            "{{ $labels.namespace }}/{{ $labels.deployment }} is burning its {{ $labels.sli }} "
            f"error budget at {alert.burn:g}x"
        ),
        "description": (
            f"Over both the last {alert.long} and {alert.short}, at least {error_share:.3g}% of requests to "
            "{{ $labels.namespace }}/{{ $labels.deployment }} missed the {{ $labels.sli }} threshold "
            f"(objective {targets.objective * 100:g}%). At this rate the 30-day error budget is gone in "
            f"{days:.3g} days."
        ),
        "runbook_url": f"{runbook_url}#{alert.anchor}",
    }


def alert_rules(
    targets: SLOTargets = DEFAULT_TARGETS, selector: str = "", runbook_url: str = RUNBOOK_URL
) -> list[Rule]:
    """The four alerts of the recipe; each fires per (namespace, deployment, sli)."""
    return [
        {
            "alert": alert.name,
            "expr": (
                f"{burn_rate(alert.long, selector)} >= {alert.burn:g}\n"
                f"and\n{burn_rate(alert.short, selector)} >= {alert.burn:g}\n"
            ),
            "labels": {"severity": alert.severity},
            "annotations": alert_annotations(alert, targets, runbook_url),
        }
        for alert in BURN_ALERTS
    ]


def rule_files(
    targets: SLOTargets = DEFAULT_TARGETS, selector: str = "", runbook_url: str = RUNBOOK_URL
) -> dict[str, RuleFile]:
    """Prometheus rule files by name; the chart wraps each in a PrometheusRule (or a ConfigMap)."""
    return {
        "slo-recording.yaml": {
            "groups": [{"name": "infleet-slo-recording", "rules": recording_rules(targets, selector)}]
        },
        "slo-alerts.yaml": {
            "groups": [{"name": "infleet-slo-alerts", "rules": alert_rules(targets, selector, runbook_url)}]
        },
    }


def prometheus_rule(name: str, rules: RuleFile, namespace: str | None = None) -> dict[str, Any]:
    """A Prometheus Operator `PrometheusRule` holding one rule file's groups (for the chart or the operator)."""
    metadata: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/part-of": "infleet"}}
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule", "metadata": metadata, "spec": rules}
