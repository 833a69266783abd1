"""`infleet report`: the fleet dashboard's story as PNG files, for people without Grafana.

Reads Prometheus over a past window and draws, per deployment: load (requests/s, tokens/s), replicas (current and
desired), quantization tier, p99 TTFT/TPOT/end-to-end against that deployment's own SLO thresholds, attainment
against its own objective and the error budget it has left, and $ per 1M tokens against its own limit. Each
deployment's objectives come from the series the operator exports from its spec, never from a fleet-wide default.
The queries are the dashboards' own (`promql.py`).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from prometheus_api_client import PrometheusConnect
from urllib3.util.retry import Retry

from infleet.api.durations import seconds
from infleet.api.tiers import TIERS
from infleet.monitoring import promql


@dataclass
class Series:
    """One line: a label dict and (time, value) points."""

    labels: dict[str, str]
    times: list[datetime]
    values: list[float]

    @property
    def name(self) -> str:
        return f"{self.labels.get('namespace', '?')}/{self.labels.get('deployment', '?')}"


class Source:
    """Range queries against one Prometheus, over one time span."""

    def __init__(self, url: str, since: float, step: float, selector: str) -> None:
        self.client = PrometheusConnect(url=url, disable_ssl=True, retry=Retry(total=1, backoff_factor=0.2))
        self.end = datetime.now(UTC)
        self.start = self.end - timedelta(seconds=since)
        self.step = f"{max(step, 1.0):g}s"
        self.selector = selector
        self.summary: list[str] = []  # per deployment, filled by build_report

    def check(self) -> None:
        try:
            ok = self.client.check_prometheus_connection()
        except Exception as exc:  # requests wraps refusals and DNS failures in long chained messages
            raise ConnectionError(f"cannot reach Prometheus at {self.client.url} ({type(exc).__name__})") from exc
        if not ok:
            raise ConnectionError(f"cannot reach Prometheus at {self.client.url} (it answered with an error)")

    def query(self, expr: str) -> list[Series]:
        result: list[dict[str, Any]] = self.client.custom_query_range(expr, self.start, self.end, self.step)
        return [
            Series(
                item["metric"],
                [datetime.fromtimestamp(float(t), UTC) for t, _ in item["values"]],
                [float(v) for _, v in item["values"]],
            )
            for item in result
        ]


def _axes_plot(ax: Any, series: list[Series], suffix: str = "", style: str = "-") -> None:
    for s in series:
        ax.plot(s.times, s.values, style, label=s.name + suffix, drawstyle="steps-post", markersize=2)


def _against_own(ax: Any, measured: list[Series], objectives: list[Series], what: str) -> None:
    """Each deployment's measured line and, in the same colour, its own objective as a dotted line."""
    own = {o.name: o for o in objectives}
    for s in measured:
        (line,) = ax.plot(s.times, s.values, "-", label=s.name, drawstyle="steps-post")
        o = own.pop(s.name, None)
        if o is not None:
            ax.plot(o.times, o.values, ":", color=line.get_color(), label=f"{s.name} {what}", drawstyle="steps-post")
    for o in own.values():  # an objective without traffic yet
        ax.plot(o.times, o.values, ":", label=f"{o.name} {what}", drawstyle="steps-post")


def last(series: list[Series]) -> dict[str, float]:
    return {s.name: s.values[-1] for s in series if s.values}


def _finish(fig: Any, axes: list[Any], title: str, path: Path) -> None:
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", loc="upper left")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary(objectives: dict[str, float], attained: dict[str, float], left: dict[str, float]) -> list[str]:
    """One line per deployment: its objective, what it attained and the budget it has left (worst SLI)."""
    lines = []
    for name in sorted(set(objectives) | set(attained)):
        objective, got, budget = objectives.get(name), attained.get(name), left.get(name)
        parts = [f"objective {objective * 100:g}%" if objective is not None else "no objective exported"]
        parts.append(f"attained {got * 100:.3f}%" if got is not None else "no requests judged")
        if budget is not None:
            parts.append(f"budget left {budget * 100:.1f}%" + (" (OVERSPENT)" if budget < 0 else ""))
        lines.append(f"{name}: " + ", ".join(parts))
    return lines


def build_report(source: Source, out: Path, rate_window: str) -> dict[str, int]:
    """Write the PNGs; returns the number of series drawn per file (0 = that plot is empty)."""
    out.mkdir(parents=True, exist_ok=True)
    sel, counts = source.selector, {}

    fig, axes = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    requests = source.query(promql.request_rate(sel, rate_window))
    tokens = source.query(promql.generation_tokens_per_second(sel, rate_window))
    _axes_plot(axes[0], requests)
    axes[0].set_ylabel("requests / s")
    _axes_plot(axes[1], tokens)
    axes[1].set_ylabel("generated tokens / s")
    _finish(fig, list(axes), "Load", out / "load.png")
    counts["load.png"] = len(requests) + len(tokens)

    fig, ax = plt.subplots(figsize=(10, 4))
    current, desired = source.query(promql.replicas(sel)), source.query(promql.desired_replicas(sel))
    _axes_plot(ax, current)
    _axes_plot(ax, desired, " desired", "--")
    ax.set_ylabel("replicas")
    _finish(fig, [ax], "Replicas", out / "replicas.png")
    counts["replicas.png"] = len(current) + len(desired)

    fig, ax = plt.subplots(figsize=(10, 4))
    info = source.query(promql.tier(sel))
    points: dict[str, list[tuple[datetime, float]]] = {}
    labels: dict[str, dict[str, str]] = {}
    for s in info:  # one series per (deployment, tier) while that tier is current: merge into a level per deployment
        level = float(TIERS.index(s.labels["tier"])) if s.labels.get("tier") in TIERS else -1.0
        points.setdefault(s.name, []).extend((t, level) for t, v in zip(s.times, s.values, strict=True) if v)
        labels[s.name] = s.labels
    tiers = [
        Series(labels[name], [t for t, _ in sorted(p)], [v for _, v in sorted(p)]) for name, p in sorted(points.items())
    ]
    _axes_plot(ax, tiers, style="o-")
    ax.set_yticks(range(len(TIERS)), TIERS)
    ax.set_ylabel("tier")
    _finish(fig, [ax], "Quantization tier", out / "tier.png")
    counts["tier.png"] = len(tiers)

    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    counts["latency.png"] = 0
    for ax, sli in zip(axes, ("ttft", "tpot", "e2e"), strict=True):
        p99 = [s for s in source.query(promql.latency_quantile(sli, sel, rate_window)) if s.values]
        _against_own(ax, p99, source.query(promql.slo_threshold(sli, sel)), "SLO")
        ax.set_ylabel(f"p99 {sli} (s)")
        counts["latency.png"] += len(p99)
    _finish(fig, list(axes), "p99 latency against each deployment's own SLO", out / "latency.png")

    fig, axes = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    attained = source.query(f"min by (namespace, deployment) ({promql.attainment('period', sel)})")
    objectives = source.query(promql.objective(sel))
    left = source.query(f"min by (namespace, deployment) ({promql.budget_left(sel)})")
    _against_own(axes[0], attained, objectives, "objective")
    axes[0].set_ylabel("attainment (budget period)")
    _axes_plot(axes[1], left)
    axes[1].axhline(0.0, color="red", linestyle=":", label="budget spent")
    axes[1].set_ylabel("error budget left")
    _finish(fig, list(axes), "Each deployment against its own objective", out / "slo.png")
    counts["slo.png"] = len(attained) + len(left)
    source.summary = summary(last(objectives), last(attained), last(left))

    fig, ax = plt.subplots(figsize=(10, 4))
    cost = source.query(promql.cost_per_million_tokens(sel))
    _against_own(ax, cost, source.query(promql.cost_limit(sel)), "limit")
    ax.set_ylabel("$ / 1M tokens")
    _finish(fig, [ax], "Cost against each deployment's own limit", out / "cost.png")
    counts["cost.png"] = len(cost)
    return counts


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["chargeback"]:  # `infleet report chargeback --month YYYY-MM`: the monthly CSV
        from infleet.monitoring.chargeback import main as chargeback

        return chargeback(argv[1:])
    parser = argparse.ArgumentParser(
        prog="infleet report",
        description="PNG plots of load, replicas, tier, p99 and attainment against each deployment's own SLO, "
        "budget left, and cost, from Prometheus.",
    )
    parser.add_argument("--out", type=Path, default=Path("infleet-report"), help="directory for the PNG files")
    parser.add_argument(
        "--prometheus",
        default=os.environ.get("PROMETHEUS_URL", "http://127.0.0.1:9090"),
        help="Prometheus base URL (default: $PROMETHEUS_URL or http://127.0.0.1:9090)",
    )
    parser.add_argument("--since", default="1h", help="how far back to look (30m, 6h, 1d; default 1h)")
    parser.add_argument("--rate-window", default=None, help="rate() window (default: a 60th of --since, 1m to 1h)")
    parser.add_argument("--namespace", default=".*", help="namespace regex")
    parser.add_argument("--deployment", default=".*", help="deployment regex")
    args = parser.parse_args(argv)

    try:
        since = seconds(args.since)
        window = args.rate_window or f"{int(min(max(since / 60, 60), 3600))}s"
        seconds(window)
    except ValueError as exc:
        parser.error(str(exc))
    selector = f'namespace=~"{args.namespace}",deployment=~"{args.deployment}"'
    source = Source(args.prometheus, since, since / 300, selector)
    try:
        source.check()
        counts = build_report(source, args.out, window)
    except Exception as exc:  # connection refused, HTTP errors, bad regex: one line, not a traceback
        print(f"infleet report: {exc}", file=sys.stderr)
        return 1
    for name, n in counts.items():
        print(f"{args.out / name}: {n} series")
    for line in source.summary:
        print(line)
    if not any(counts.values()):
        print(f"infleet report: no infleet series in {args.prometheus} over the last {args.since}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
