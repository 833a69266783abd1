"""The autoscaler judged by its protocol (docs/autoscaler-evaluation.md): tune on the tuning parts, judge on the rest.

For every workload (the Azure LLM code trace at time scales 1, 2, 3 and the synthetic workloads), each policy gets
the same optuna budget over its own parameters on the tuning part (`autoscaler/simulator/tuning.py`). Its choice
is then replayed on the evaluation part (warmed up on the tuning part's last 15 minutes) with cold-start seeds
0, 1, 2; the static oracle is the smallest fixed fleet reaching 99% there, with hindsight. Each workload gets one
table and verdict (`judge`), the goal check (`goal`), every policy's Pareto curve (its tuning-front trials replayed
on the evaluation part) and plots of replicas and p99 TTFT over time.

    python benchmarks/autoscaler_eval.py [--workloads ...] [--trials N] [--seeds 0 1 2] [--jobs 2]

Writes `benchmarks/results/autoscaler_eval.json`, `docs/autoscaler/<workload>.png` and the
`## Autoscaler evaluation` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from infleet.autoscaler.cost import gpu_hourly_price
from infleet.autoscaler.latency_model import MODELS, LatencyModel, device
from infleet.autoscaler.simulator.baselines import Static
from infleet.autoscaler.simulator.experiment import oracle_static, over_seeds, summarize
from infleet.autoscaler.simulator.fleet import Policy, SimConfig, SimResult, simulate
from infleet.autoscaler.simulator.judgement import BAND, TARGET, goal, judge
from infleet.autoscaler.simulator.trace import AZURE_CODE_TRACE, TraceRequest, load_trace, split
from infleet.autoscaler.simulator.tuning import TUNED, TUNING_SEED, TUNING_TRIALS, as_json, build, context_for, tune
from infleet.autoscaler.simulator.workloads import WORKLOADS, generate

ROOT = Path(__file__).resolve().parent.parent
GPU, MODEL, TIER = "NVIDIA-L4", "llama-3.1-8b", "fp8"
WARMUP = 900.0
WORKLOAD_SEED = 0  # the synthetic traces' generator seed, fixed with the protocol
AZURE_SCALES = (1.0, 2.0, 3.0)
MAX_REPLICAS = 64  # every policy's bound, and the static oracle's
PARETO_POINTS = 6  # tuning-front trials replayed per policy (the cheapest, the dearest, evenly between)


def workloads(trace_path: Path) -> dict[str, list[TraceRequest]]:
    out: dict[str, list[TraceRequest]] = {}
    if trace_path.is_file():
        out |= {f"azure-code-x{s:g}": load_trace(trace_path, s) for s in AZURE_SCALES}
    return out | {name: generate(name, WORKLOAD_SEED) for name in WORKLOADS}


def evaluate(
    name: str, trace: list[TraceRequest], trials: int, seeds: Sequence[int], plots: Path, pareto_points: int
) -> dict[str, Any]:
    """Tune every policy on the tuning part, then replay the choices on the evaluation part."""
    started = time.monotonic()
    model = LatencyModel(device(GPU), MODELS[MODEL], TIER)
    price = gpu_hourly_price(GPU)
    base = SimConfig(warmup=WARMUP)
    parts = split(trace)
    ctx = context_for(parts.tuning, model, base)
    tuned = {policy: tune(policy, parts.tuning, ctx, trials, TUNING_SEED) for policy in TUNED}

    def replay(policy: Policy, seed: int) -> SimResult:
        config = SimConfig(seed=seed, warmup=WARMUP)
        return simulate(parts.evaluation, model, policy, config, parts.before_evaluation)

    runs: dict[str, list[dict[str, Any]]] = {}
    first: dict[str, SimResult] = {}
    for policy, t in tuned.items():
        results = [replay(build(policy, t.chosen.params, ctx), seed) for seed in seeds]
        runs[policy] = [summarize(r, base, price) for r in results]
        first[policy] = results[0]
    size, reached = oracle_static(lambda p: replay(p, seeds[0]), base, TARGET, MAX_REPLICAS)
    best = reached.slo_attainment(base.ttft_slo, base.tpot_slo)
    if best < TARGET:  # no fleet within the policies' bound reaches it: the smallest within one point of its best
        size, _ = oracle_static(lambda p: replay(p, seeds[0]), base, best - BAND, MAX_REPLICAS)
    oracle = [replay(Static(size, name="static-oracle"), seed) for seed in seeds]
    runs["static-oracle"] = [summarize(r, base, price) for r in oracle]
    first["static-oracle"] = oracle[0]
    table = {policy: over_seeds(rows) for policy, rows in runs.items()}
    table["static-oracle"]["replicas"] = size

    pareto: dict[str, list[dict[str, float]]] = {}
    for policy, t in tuned.items():
        front = t.pareto()
        pick = sorted({round(i * (len(front) - 1) / max(pareto_points - 1, 1)) for i in range(pareto_points)})
        points = []
        for trial in (front[i] for i in pick if front):
            r = replay(build(policy, trial.params, ctx), seeds[0])
            points.append(
                {
                    "trial": trial.number,
                    "tuning_attainment": round(trial.attainment, 5),
                    "tuning_gpu_hours": round(trial.gpu_hours, 4),
                    "attainment": round(r.slo_attainment(base.ttft_slo, base.tpot_slo), 5),
                    "gpu_hours": round(r.gpu_seconds / 3600, 4),
                }
            )
        pareto[policy] = points
    plot(plots / f"{name}.png", name, parts.evaluation, first, pareto, base)
    return {
        "requests": {"tuning": len(parts.tuning), "evaluation": len(parts.evaluation)},
        "cut_seconds": round(parts.cut, 1),
        "tuning": {policy: as_json(t) for policy, t in tuned.items()},
        "policies": table,
        "runs": runs,
        "pareto": pareto,
        "verdict": str(judge(table)),
        "goal": str(goal(table)),
        "seconds": round(time.monotonic() - started, 1),
    }


def plot(
    path: Path,
    name: str,
    trace: list[TraceRequest],
    results: dict[str, SimResult],
    pareto: dict[str, list[dict[str, float]]],
    config: SimConfig,
) -> None:
    """Load, replicas and p99 TTFT over the evaluation part (first seed), and the Pareto curves."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = plt.figure(figsize=(12, 9))
    grid = fig.add_gridspec(3, 2, width_ratios=(3, 2))
    ax_load = fig.add_subplot(grid[0, 0])
    ax_rep = fig.add_subplot(grid[1, 0], sharex=ax_load)
    ax_lat = fig.add_subplot(grid[2, 0], sharex=ax_load)
    ax_par = fig.add_subplot(grid[:, 1])
    arrivals = np.array([r.arrival for r in trace])
    tokens = np.array([r.prompt_tokens + r.output_tokens for r in trace], dtype=float)
    bins = np.bincount((arrivals // 10).astype(int), weights=tokens) / 10
    ax_load.step(np.arange(len(bins)) * 10.0, bins, where="post", color="tab:gray")
    ax_load.set_ylabel("load (tokens/s)")
    ax_load.set_title(f"{name}: evaluation part")
    for policy, result in results.items():
        t = np.array(result.timeline.time) - result.warmup
        keep = t >= 0
        ax_rep.step(t[keep], np.array(result.timeline.replicas)[keep], where="post", label=policy)
        ax_lat.plot(t[keep], np.array(result.timeline.ttft_p99)[keep], label=policy, linewidth=0.8)
    ax_lat.axhline(config.ttft_slo, color="black", linestyle=":", label="TTFT SLO")
    ax_rep.set_ylabel("replicas")
    ax_lat.set_ylabel("p99 TTFT (s, 30 s window)")
    ax_lat.set_yscale("log")
    ax_lat.set_xlabel("seconds into the evaluation part")
    ax_rep.legend(fontsize="small", loc="upper left")
    for policy, points in pareto.items():
        if points:
            ax_par.plot(
                [p["gpu_hours"] for p in points], [100 * p["attainment"] for p in points], marker="o", label=policy
            )
    ax_par.axhline(99, color="black", linestyle=":")
    ax_par.set_xlabel("GPU-hours (evaluation part)")
    ax_par.set_ylabel("SLO attainment (%)")
    ax_par.set_title("Pareto curves: tuning-front trials, replayed")
    ax_par.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def markdown(report: dict[str, Any]) -> str:
    s = report["setup"]
    lines = [
        "## Autoscaler evaluation",
        "",
        f"`python benchmarks/autoscaler_eval.py` follows [autoscaler-evaluation.md](autoscaler-evaluation.md):"
        f" {s['model']} in {s['tier']} on {s['gpu']} (${s['gpu_hourly_price']:.2f}/GPU-hour), SLO TTFT p99"
        f" {s['ttft_slo']:g} s and TPOT p99 {1000 * s['tpot_slo']:g} ms, {s['cold_start']:g} s cold starts. Every"
        f" policy got {s['trials']} optuna TPE trials (seed {s['tuning_seed']}) over its own parameters on each"
        " workload's tuning part (the first 60% of its time span), the objective being the fewest GPU-hours at"
        " >= 99% attainment. The tables are the evaluation parts (the rest), each warmed up on the tuning part's last"
        f" {s['warmup'] / 60:g} minutes, means over cold-start seeds {', '.join(map(str, s['seeds']))} (`min`: the"
        " worst seed). `static-oracle` is the smallest fixed fleet reaching 99% on the evaluation part itself, with"
        f" hindsight (where no fleet of up to {MAX_REPLICAS} replicas does: the smallest within one point of the best"
        f" one does). The whole run took {s['minutes']:.1f} minutes with {s['jobs']} worker processes on this shared"
        f" 2-core machine (load average {s['load_average'][0]:.2f} / {s['load_average'][1]:.2f} at start / end).",
        "",
    ]
    if s["trials"] < TUNING_TRIALS or s.get("workloads_left_out") or len(s["seeds"]) < 3:
        lines += [
            f"**A reduced run**, not the whole protocol: {s['trials']} trials per policy (the protocol's budget is"
            f" {TUNING_TRIALS}), seeds {', '.join(map(str, s['seeds']))}, {s.get('pareto_points', PARETO_POINTS)}"
            " Pareto points per policy"
            + (f"; workloads not run: {', '.join(s['workloads_left_out'])}" if s.get("workloads_left_out") else "")
            + ". The machine's load from other work left each simulation about a tenth of a core"
            " (docs/autoscaler-evaluation.md, Status).",
            "",
        ]
    for name, block in report["workloads"].items():
        lines += [
            f"### {name} ({block['requests']['evaluation']:,} requests evaluated,"
            f" {block['requests']['tuning']:,} tuned on)",
            "",
            "| policy | SLO attainment (mean / min) | GPU-hours | $/1M tokens | scale events | peak replicas"
            " | tuned feasible |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for policy, p in block["policies"].items():
            tuned = block["tuning"].get(policy)
            feasible = "yes" if tuned and tuned["feasible"] else "no" if tuned else "hindsight"
            lines.append(
                f"| {policy} | {100 * p['slo_attainment']:.2f}% / {100 * p['slo_attainment_min']:.2f}% |"
                f" {p['gpu_hours']:.3f} | {p['cost_per_million_tokens']:.4f} | {p['scale_events']:g} |"
                f" {p['max_replicas']} | {feasible} |"
            )
        lines += [
            "",
            f"Verdict: {block['verdict']}.",
            "",
            f"Goal check: {block['goal']}.",
            "",
            f"![{name}](autoscaler/{name}.png)",
            "",
        ]
    return "\n".join(lines)


def update_docs(section: str, path: Path, heading: str = "## Autoscaler evaluation") -> None:
    """Replace the `heading` section of docs/benchmarks.md (up to the next `## `), or append it."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
    if start is None:
        path.write_text(text.rstrip("\n") + "\n\n" + section)
        return
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    path.write_text("".join(lines[:start]) + section + ("\n" if end < len(lines) else "") + "".join(lines[end:]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", type=Path, default=AZURE_CODE_TRACE)
    p.add_argument("--workloads", nargs="+", help="default: every workload")
    p.add_argument("--trials", type=int, default=TUNING_TRIALS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--pareto-points", type=int, default=PARETO_POINTS)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "autoscaler_eval.json")
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--docs-only", action="store_true", help="re-render the docs from the committed JSON, no run")
    args = p.parse_args()
    if args.docs_only:
        report = json.loads(args.out.read_text())
    else:
        traces = workloads(args.trace)
        if not args.trace.is_file():
            print(f"{args.trace} not found: the Azure trace's workloads are left out", file=sys.stderr)
        names = args.workloads or list(traces)
        unknown = sorted(set(names) - set(traces))
        if unknown:
            p.error(f"unknown workloads {unknown}; known: {', '.join(traces)}")
        started, load = time.monotonic(), os.getloadavg()[0]
        plots = args.docs.parent / "autoscaler"
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = {
                n: pool.submit(evaluate, n, traces[n], args.trials, args.seeds, plots, args.pareto_points)
                for n in names
            }
            blocks = {}
            for n, future in futures.items():
                blocks[n] = future.result()
                print(f"{n}: {blocks[n]['seconds']:.0f}s; {blocks[n]['verdict']}", file=sys.stderr)
        model = LatencyModel(device(GPU), MODELS[MODEL], TIER)
        report = {
            "setup": {
                "gpu": GPU,
                "model": MODEL,
                "tier": TIER,
                "kv_capacity_tokens": model.kv_capacity_tokens,
                "gpu_hourly_price": gpu_hourly_price(GPU),
                "ttft_slo": SimConfig.ttft_slo,
                "tpot_slo": SimConfig.tpot_slo,
                "cold_start": SimConfig.cold_start,
                "warmup": WARMUP,
                "seeds": args.seeds,
                "trials": args.trials,
                "tuning_seed": TUNING_SEED,
                "workload_seed": WORKLOAD_SEED,
                "jobs": args.jobs,
                "pareto_points": args.pareto_points,
                "workloads_left_out": [n for n in traces if n not in names],
                "minutes": round((time.monotonic() - started) / 60, 1),
                "load_average": [round(load, 2), round(os.getloadavg()[0], 2)],
            },
            "workloads": blocks,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    section = markdown(report)
    update_docs(section, args.docs)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
