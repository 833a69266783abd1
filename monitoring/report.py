"""`infleet report`: the fleet dashboard's story as PNG files, for people without Grafana.

Reads Prometheus over a past window and draws, per deployment: load (requests/s, tokens/s), replicas (current and
desired), quantization tier, p99 TTFT/TPOT/end-to-end against the SLO, and $ per 1M tokens. The queries are the
dashboards' own (`promql.py`).
"""

from __future__ import annotations

import argparse
import os
import re
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

from infleet.monitoring import promql
from infleet.monitoring.slo import DEFAULT_TARGETS, SLOTargets

TIERS = ("bf16", "fp8", "int8", "int4")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def seconds(duration: str) -> float:
    """Seconds in a Prometheus-style duration ("90s", "30m", "1h30m", "2d")."""
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhdw])", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a duration: {duration!r} (write e.g. 30m, 6h, 1d)")
    return sum(float(n) * _UNITS[u] for n, u in parts)


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


def build_report(source: Source, out: Path, rate_window: str, targets: SLOTargets = DEFAULT_TARGETS) -> dict[str, int]:
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

    slos = {"ttft": targets.ttft, "tpot": targets.tpot, "e2e": targets.e2e}
    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    counts["latency.png"] = 0
    for ax, (sli, threshold) in zip(axes, slos.items(), strict=True):
        p99 = [s for s in source.query(promql.latency_quantile(sli, sel, rate_window)) if s.values]
        _axes_plot(ax, p99)
        if threshold is not None:
            ax.axhline(threshold, color="red", linestyle=":", label=f"SLO {threshold:g} s")
        ax.set_ylabel(f"p99 {sli} (s)")
        counts["latency.png"] += len(p99)
    _finish(fig, list(axes), "p99 latency against the SLO", out / "latency.png")

    fig, ax = plt.subplots(figsize=(10, 4))
    cost = source.query(promql.cost_per_million_tokens(sel))
    _axes_plot(ax, cost)
    ax.set_ylabel("$ / 1M tokens")
    _finish(fig, [ax], "Cost", out / "cost.png")
    counts["cost.png"] = len(cost)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="infleet report",
        description="PNG plots of load, replicas, tier, p99 against the SLO, and cost, from Prometheus.",
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
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

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
    if not any(counts.values()):
        print(f"infleet report: no infleet series in {args.prometheus} over the last {args.since}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
