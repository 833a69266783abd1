"""Write a comparison out: `results.json` and PNG plots of load, replicas and p99 over time (matplotlib, Agg)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from infleet.autoscaler.simulator.fleet import SimConfig, SimResult
from infleet.autoscaler.simulator.trace import TraceRequest


def write_results(out: Path, summary: Mapping[str, Mapping[str, float | int]], meta: Mapping[str, object]) -> Path:
    """`{policy: {slo_attainment, gpu_hours, cost_per_million_tokens, scale_events, requests, failed, ...}}`;
    the run's settings go to `meta.json` beside it so results.json keeps the documented shape."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    (out / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    return path


def plot(out: Path, trace: Sequence[TraceRequest], results: Mapping[str, SimResult], config: SimConfig) -> list[Path]:
    """One PNG per policy (load, replicas, p99 TTFT and TPOT against the SLO) and one of all replica counts."""
    out.mkdir(parents=True, exist_ok=True)
    arrivals = np.array([r.arrival for r in trace])
    tokens = np.array([r.prompt_tokens + r.output_tokens for r in trace], dtype=float)
    bins = np.bincount((arrivals // 10).astype(int), weights=tokens) / 10
    load_t = np.arange(len(bins)) * 10.0
    paths = []
    for name, result in results.items():
        tl = result.timeline
        t = np.array(tl.time) - result.warmup
        keep = t >= 0
        fig, (ax_load, ax_rep, ax_lat) = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
        ax_load.step(load_t, bins, where="post", color="tab:gray")
        ax_load.set_ylabel("load (tokens/s)")
        ax_load.set_title(f"{name}: load, replicas and p99 over time")
        ax_rep.step(t[keep], np.array(tl.replicas)[keep], where="post", label="desired")
        ax_rep.step(t[keep], np.array(tl.ready)[keep], where="post", label="ready")
        ax_rep.set_ylabel("replicas")
        ax_rep.legend(loc="upper right")
        ax_lat.plot(t[keep], np.array(tl.ttft_p99)[keep], label="TTFT p99")
        ax_lat.plot(t[keep], np.array(tl.tpot_p99)[keep], label="TPOT p99")
        ax_lat.axhline(config.ttft_slo, color="tab:blue", linestyle=":", label="TTFT SLO")
        ax_lat.axhline(config.tpot_slo, color="tab:orange", linestyle=":", label="TPOT SLO")
        ax_lat.set_yscale("log")
        ax_lat.set_ylabel("seconds")
        ax_lat.set_xlabel("trace time (s)")
        ax_lat.legend(loc="upper right", fontsize="small")
        fig.tight_layout()
        path = out / f"timeline_{name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    fig, ax = plt.subplots(figsize=(10, 4))
    for name, result in results.items():
        t = np.array(result.timeline.time) - result.warmup
        keep = t >= 0
        ax.step(t[keep], np.array(result.timeline.replicas)[keep], where="post", label=name)
    ax.set_xlabel("trace time (s)")
    ax.set_ylabel("replicas")
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    path = out / "replicas.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    paths.append(path)
    return paths


def table(summary: Mapping[str, Mapping[str, float | int]]) -> str:
    """A markdown table of the summary."""
    lines = [
        "| policy | SLO attainment | GPU-hours | $/1M tokens | scale events | peak replicas | failed |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in summary.items():
        lines.append(
            f"| {name} | {100 * float(s['slo_attainment']):.2f}% | {float(s['gpu_hours']):.2f} | "
            f"{float(s['cost_per_million_tokens']):.4f} | {s['scale_events']} | {s.get('max_replicas', '')} | "
            f"{s['failed']} |"
        )
    return "\n".join(lines)
