"""Every autoscaling policy on the Azure LLM code trace (Splitwise, ISCA 2024; CC-BY 4.0) in the fleet simulator.

Llama-3.1-8B in fp8 on L4 GPUs (roofline latency model), SLO TTFT p99 2 s and TPOT p99 100 ms (MLPerf's server
values for this model), 30 s cold starts, 15 minutes of warm-up replayed before the measured hour. Each time scale
is run with several seeds (they move the cold starts); the table shows the mean (and the worst attainment).

    python benchmarks/autoscaler_trace.py [--trace FILE] [--time-scales 1 2 3] [--seeds 0 1 2] [--out DIR]

Writes `OUT/autoscaler_trace.json`, PNG timelines of the first seed in `OUT/autoscaler_trace/`, and the
`## Autoscaler` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from infleet.autoscaler.cost import gpu_hourly_price
from infleet.autoscaler.latency_model import MODELS, LatencyModel, device
from infleet.autoscaler.simulator.experiment import POLICIES, compare, describe, over_seeds
from infleet.autoscaler.simulator.fleet import SimConfig
from infleet.autoscaler.simulator.judgement import judge
from infleet.autoscaler.simulator.report import plot
from infleet.autoscaler.simulator.trace import AZURE_CODE_TRACE, TraceRequest, load_trace

ROOT = Path(__file__).resolve().parent.parent
GPU, MODEL, TIER = "NVIDIA-L4", "llama-3.1-8b", "fp8"


def needed_replicas(trace: list[TraceRequest], capacity: float) -> dict[str, int]:
    """Replicas the load needs at full capacity, by window: the range the time scale is chosen for."""
    arrivals = np.array([r.arrival for r in trace])
    tokens = np.array([r.prompt_tokens + r.output_tokens for r in trace], dtype=float)
    out = {}
    for window in (10, 60, 300):
        rate = np.bincount((arrivals // window).astype(int), weights=tokens) / window
        busy = rate[rate > 0]
        out[f"median_{window}s"] = math.ceil(float(np.median(busy)) / capacity)
        out[f"peak_{window}s"] = math.ceil(float(busy.max()) / capacity)
    return out


def run(trace_path: Path, scales: list[float], seeds: list[int], out: Path) -> dict[str, Any]:
    model = LatencyModel(device(GPU), MODELS[MODEL], TIER)
    report: dict[str, Any] = {
        "setup": {
            "trace": trace_path.name,
            "gpu": GPU,
            "model": MODEL,
            "tier": TIER,
            "gpu_hourly_price": gpu_hourly_price(GPU),
            "ttft_slo": SimConfig.ttft_slo,
            "tpot_slo": SimConfig.tpot_slo,
            "cold_start": SimConfig.cold_start,
            "warmup": 900.0,
            "seeds": seeds,
        },
        "scales": {},
    }
    for scale in scales:
        trace = load_trace(trace_path, scale)
        runs = []
        for seed in seeds:
            config = SimConfig(seed=seed, warmup=900.0)
            started = time.monotonic()
            summary, results, workload = compare(trace, model, config, POLICIES)
            print(f"time scale {scale:g}, seed {seed}: {time.monotonic() - started:.0f}s", file=sys.stderr)
            runs.append(summary)
            if seed == seeds[0]:
                plot(out / "autoscaler_trace" / f"x{scale:g}", trace, results, config)
        workload = describe(trace, model, SimConfig())
        report["scales"][f"{scale:g}"] = {
            "capacity_tokens_per_second": round(workload.capacity, 1),
            "needed_replicas": needed_replicas(trace, workload.capacity),
            "policies": {name: aggregate([r[name] for r in runs]) for name in POLICIES},
            "runs": runs,
        }
    return report


def aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """`over_seeds`, with the trace's request count (the same for every seed)."""
    return {**over_seeds(rows), "requests": rows[0]["requests"]}


def verdict(policies: dict[str, Any]) -> str:
    """The one judgement (docs/autoscaler-evaluation.md, section 6): `infleet wins` only when infleet reaches 99%
    with fewer GPU-hours than every other policy at 99%, the static oracle included; never by an empty comparison."""
    return str(judge(policies))


def markdown(report: dict[str, Any]) -> str:
    s = report["setup"]
    lines = [
        "## Autoscaler",
        "",
        f"`python benchmarks/autoscaler_trace.py` replays `{s['trace']}` (one hour of Azure LLM code traffic, 8,819"
        f" requests; Splitwise, ISCA 2024) through the fleet simulator (`infleet autoscaler simulate`): {s['model']}"
        f" in {s['tier']} on {s['gpu']} (${s['gpu_hourly_price']:.2f}/GPU-hour), a roofline latency model with"
        f" chunked prefill, SLO TTFT p99 {s['ttft_slo']:g} s and TPOT p99 {1000 * s['tpot_slo']:g} ms, cold starts of"
        f" {s['cold_start']:g} s (±20%, seeded), the trace's last {s['warmup'] / 60:g} minutes replayed first as"
        " warm-up (unmeasured; GPU time counts from the trace's start). SLO attainment is the share of all requests"
        " meeting both SLOs (failed ones count as misses); $/1M tokens divides the GPU cost by prompt + output"
        f" tokens served. Means over seeds {', '.join(map(str, s['seeds']))}; `min` is the worst seed.",
        "",
        "Baselines: `hpa-gpu-util` (Kubernetes HPA on GPU busy fraction, target 70%, 300 s scale-down window),"
        " `keda-queue` (KEDA on `num_requests_waiting`, 4 per replica, HPA behaviour underneath), `knative-kpa`"
        " (concurrency target from the replica's capacity, 60 s stable / 6 s panic window at 200%), `static-peak`"
        " (the trace's highest 60 s load at 70% of capacity), and `static-oracle`: the smallest fixed fleet that"
        " reaches 99%, found by searching with hindsight. No autoscaler has that knowledge, but a fixed fleet of"
        ' that size is what a user could run instead, so the verdict counts it as a rival: "infleet wins" only at'
        " >= 99% with fewer GPU-hours than every other policy at >= 99%; with none there, infleet is compared at the"
        " rivals' best attainment and the verdict says so.",
        "",
        "These tables predate the evaluation protocol in [autoscaler-evaluation.md](autoscaler-evaluation.md)"
        " (tuning and evaluation parts split by time, every policy tuned with the same budget, a causal policy):"
        " they replay the whole trace with every policy at its stock defaults, and infleet's capacity per replica then"
        " came from the whole trace's mean prompt and output lengths. It now comes from the token mix observed over"
        " the last 5 minutes; the tables have not been re-run since.",
        "",
    ]
    for scale, block in report["scales"].items():
        need = block["needed_replicas"]
        lines += [
            f"### Time scale {scale} (capacity {block['capacity_tokens_per_second']:.0f} tokens/s per replica at the"
            f" SLO; the load needs {need['median_60s']}–{need['peak_60s']} replicas by minute, up to"
            f" {need['peak_10s']} in its 10 s peaks)",
            "",
            "| policy | SLO attainment (mean / min) | GPU-hours | $/1M tokens | scale events | peak replicas"
            " | failed |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, p in block["policies"].items():
            lines.append(
                f"| {name} | {100 * p['slo_attainment']:.2f}% / {100 * p['slo_attainment_min']:.2f}% |"
                f" {p['gpu_hours']:.2f} | {p['cost_per_million_tokens']:.4f} | {p['scale_events']:g} |"
                f" {p['max_replicas']} | {p['failed']:g} |"
            )
        lines += ["", "Verdict: " + verdict(block["policies"]) + ".", ""]
    lines += [
        "Plots of load, replicas and p99 over time for each policy (first seed):"
        " `benchmarks/results/autoscaler_trace/x<scale>/`.",
        "",
    ]
    return "\n".join(lines)


def update_docs(section: str, path: Path) -> None:
    """Replace the `## Autoscaler` section of docs/benchmarks.md (other sections belong to other parts)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.strip() == "## Autoscaler"), None)
    if start is None:
        path.write_text(text.rstrip("\n") + "\n\n" + section)
        return
    # up to the next section, or a subsection this script does not write (the latency model's calibration)
    end = next(
        (
            i
            for i in range(start + 1, len(lines))
            if lines[i].startswith("## ") or (lines[i].startswith("### ") and not lines[i].startswith("### Time scale"))
        ),
        len(lines),
    )
    path.write_text("".join(lines[:start]) + section + ("\n" if end < len(lines) else "") + "".join(lines[end:]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", type=Path, default=AZURE_CODE_TRACE)
    p.add_argument("--time-scales", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--docs-only", action="store_true", help="re-render the docs from the committed JSON, no run")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.docs_only:
        report = json.loads((args.out / "autoscaler_trace.json").read_text())
    else:
        report = run(args.trace, args.time_scales, args.seeds, args.out)
        (args.out / "autoscaler_trace.json").write_text(json.dumps(report, indent=2) + "\n")
    section = markdown(report)
    update_docs(section, args.docs)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
