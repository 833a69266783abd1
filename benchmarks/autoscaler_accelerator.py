"""The cheapest accelerator per SLO, simulated: accelerator x tier chosen by the chooser against fixed fleets.

Llama-3.1-8B on the Azure LLM code trace (Splitwise, ISCA 2024; CC-BY 4.0), SLO TTFT p99 2 s and TPOT p99 100 ms,
roofline latency models of the L4, A100 and H100, prices from `DEFAULT_GPU_PRICES`, quality floor 0.01 (the
chooser's default quality losses: bf16 0, fp8 0.005, int8 0.01, int4 0.04, so int4 is out). Every arm's replicas are
run by infleet's autoscaling policy at its stock settings: the arms differ only in what the replicas are.

The protocol of docs/autoscaler-evaluation.md: each trace is split by time; the chooser (`tiers.choose_tier`, the
operator's own) sees only the tuning part (its token mix gives each option's capacity at the SLO, its highest
60 s load is the forecast), and its choice is replayed on the evaluation part, after the tuning part's last 15
minutes as unmeasured warm-up, with cold-start seeds 0, 1, 2. The arms:
- `chooser`: accelerator x tier x replicas over every allowed product;
- `chooser on <product>`: the same chooser with one product allowed (a fixed accelerator, tier still chosen);
- `bf16 on <product>`: fixed bf16 on one product; `bf16 on H100` is the reference of the goal.
"Best single fixed accelerator" is the cheapest `chooser on <product>` arm at the target attainment, picked with
hindsight on the evaluation part (a stricter rival than any a user could pick beforehand).

Goal (computed, can say "not met"): the chooser's $/1M tokens is >= 30% below `bf16 on H100` while its attainment
is at least the reference's (or >= 99%) minus the one-point band.

    python benchmarks/autoscaler_accelerator.py [--time-scales 1 3] [--seeds 0 1 2] [--out DIR]

Writes `OUT/autoscaler_accelerator.json` and the `## Accelerator choice` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from infleet.autoscaler import tiers
from infleet.autoscaler.cost import DEFAULT_GPU_PRICES
from infleet.autoscaler.latency_model import MODELS, LatencyModel, device
from infleet.autoscaler.simulator.experiment import describe as describe_workload
from infleet.autoscaler.simulator.experiment import make_policy, over_seeds, summarize
from infleet.autoscaler.simulator.fleet import SimConfig, simulate
from infleet.autoscaler.simulator.judgement import BAND, TARGET
from infleet.autoscaler.simulator.trace import AZURE_CODE_TRACE, TraceRequest, load_trace, split
from infleet.operator import checks

sys.path.insert(0, str(Path(__file__).resolve().parent))
from autoscaler_eval import update_docs

ROOT = Path(__file__).resolve().parent.parent
MODEL = "llama-3.1-8b"
PRODUCTS = ("NVIDIA-L4", "NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3")
SHORT = {"NVIDIA-L4": "L4", "NVIDIA-A100-SXM4-80GB": "A100", "NVIDIA-H100-80GB-HBM3": "H100"}
MAX_QUALITY_LOSS = 0.01
WARMUP = 900.0
GOAL_SAVING = 0.30
REFERENCE = "bf16 on H100"


def forecast(trace: list[TraceRequest]) -> float:
    """The tuning part's highest 60 s load (tokens/s): what the fleet must be planned for."""
    arrivals = np.array([r.arrival for r in trace])
    tokens = np.array([r.prompt_tokens + r.output_tokens for r in trace], dtype=float)
    return float((np.bincount(((arrivals - arrivals.min()) // 60).astype(int), weights=tokens) / 60).max())


def options(tuning: list[TraceRequest], products: tuple[str, ...], config: SimConfig) -> list[tiers.TierOption]:
    """Every tier on every product that fits its memory and meets the SLO, sized at the tuning part's token mix."""
    prompt = statistics.fmean(r.prompt_tokens for r in tuning)
    output = statistics.fmean(r.output_tokens for r in tuning)
    return tiers.roofline_profile(MODELS[MODEL], products, prompt, output, config.tpot_slo, config.ttft_slo)


def choose(tuning: list[TraceRequest], products: tuple[str, ...], config: SimConfig) -> tiers.TierDecision:
    # the operator's own check: an A100 has no FP8 tensor cores, so fp8 is not offered there
    offered = [o for o in options(tuning, products, config) if o.tier != "fp8" or checks.supports_fp8(o.gpu)]
    return tiers.choose_tier(offered, forecast(tuning), MAX_QUALITY_LOSS, tiers.TierState(), now=0.0)


def replay(product: str, tier: str, parts: Any, seeds: list[int], progress: str) -> dict[str, Any]:
    """One fixed (product, tier) fleet, run by infleet's policy, on the evaluation part with each seed."""
    model = LatencyModel(device(product), MODELS[MODEL], tier)
    rows = []
    for seed in seeds:
        config = SimConfig(seed=seed, warmup=WARMUP)
        workload = describe_workload(parts.tuning, model, config)  # the policy's figures from the tuning part only
        started = time.monotonic()
        result = simulate(
            parts.evaluation, model, make_policy("infleet", workload, config, model), config, parts.before_evaluation
        )
        rows.append(summarize(result, config, DEFAULT_GPU_PRICES[product]))
        print(
            f"{progress} {tier} on {SHORT[product]} seed {seed}: {time.monotonic() - started:.1f}s, "
            f"attainment {rows[-1]['slo_attainment']:.2%}",
            file=sys.stderr,
        )
    return {"product": product, "tier": tier, **over_seeds(rows), "runs": rows}


def goal(arms: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ours, ref = arms["chooser"], arms[REFERENCE]
    need = min(ref["slo_attainment"], TARGET) - BAND
    saving = 1 - ours["cost_per_million_tokens"] / ref["cost_per_million_tokens"]
    attained = ours["slo_attainment"] >= need
    met = attained and saving >= GOAL_SAVING
    why = (
        f"chooser ${ours['cost_per_million_tokens']:.4f}/1M at {ours['slo_attainment']:.2%} vs {REFERENCE}"
        f" ${ref['cost_per_million_tokens']:.4f}/1M at {ref['slo_attainment']:.2%}: {saving:.0%} lower"
        f" (goal >= {GOAL_SAVING:.0%}), attainment {'at least' if attained else 'below'} {need:.2%}"
    )
    return {"met": met, "saving": round(saving, 4), "attainment_needed": round(need, 4), "line": why}


def best_fixed(arms: dict[str, dict[str, Any]]) -> str | None:
    """The cheapest single-product chooser arm at the target attainment (hindsight on the evaluation part)."""
    at_target = [n for n in arms if n.startswith("chooser on ") and arms[n]["slo_attainment"] >= TARGET - BAND]
    return min(at_target, key=lambda n: arms[n]["cost_per_million_tokens"], default=None)


def run(trace_path: Path, scales: list[float], seeds: list[int]) -> dict[str, Any]:
    report: dict[str, Any] = {
        "setup": {
            "trace": trace_path.name,
            "model": MODEL,
            "products": list(PRODUCTS),
            "prices": {p: DEFAULT_GPU_PRICES[p] for p in PRODUCTS},
            "quality_loss": tiers.DEFAULT_QUALITY_LOSS,
            "max_quality_loss": MAX_QUALITY_LOSS,
            "ttft_slo": SimConfig.ttft_slo,
            "tpot_slo": SimConfig.tpot_slo,
            "cold_start": SimConfig.cold_start,
            "warmup": WARMUP,
            "seeds": seeds,
            "machine": {"cpus": os.cpu_count(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
        },
        "scales": {},
    }
    started = time.monotonic()
    for scale in scales:
        parts = split(load_trace(trace_path, scale))
        config = SimConfig()
        decisions = {"chooser": choose(parts.tuning, PRODUCTS, config)}
        for p in PRODUCTS:
            decisions[f"chooser on {SHORT[p]}"] = choose(parts.tuning, (p,), config)
        wanted: dict[str, tuple[str, str]] = {}
        for name, d in decisions.items():
            assert d.gpu is not None and d.tier is not None, d.reason
            wanted[name] = (d.gpu, d.tier)
        for p in PRODUCTS:
            wanted[f"bf16 on {SHORT[p]}"] = (p, "bf16")
        replays: dict[tuple[str, str], dict[str, Any]] = {}
        for key in dict.fromkeys(wanted.values()):
            replays[key] = replay(*key, parts, seeds, f"x{scale:g}")
        arms = {name: {k: v for k, v in replays[key].items() if k != "runs"} for name, key in wanted.items()}
        report["scales"][f"{scale:g}"] = {
            "forecast_tokens_per_second": round(forecast(parts.tuning), 1),
            "decisions": {name: d.reason for name, d in decisions.items()},
            "arms": arms,
            "replays": {f"{t} on {SHORT[p]}": r["runs"] for (p, t), r in replays.items()},
            "best_fixed": best_fixed(arms),
            "goal": goal(arms),
        }
    report["setup"]["seconds"] = round(time.monotonic() - started, 1)
    report["setup"]["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return report


def markdown(report: dict[str, Any]) -> str:
    s = report["setup"]
    prices = ", ".join(f"{SHORT[p]} ${v:.2f}" for p, v in s["prices"].items())
    lines = [
        "## Accelerator choice",
        "",
        f"`python benchmarks/autoscaler_accelerator.py` (fleet simulator, no GPU): {s['model']} on `{s['trace']}`,"
        f" SLO TTFT p99 {s['ttft_slo']:g} s and TPOT p99 {1000 * s['tpot_slo']:g} ms, roofline latency models,"
        f" GPU-hour prices {prices}, quality floor {s['max_quality_loss']:g} (int4's assumed 0.04 is out). The"
        " chooser (`autoscaler/tiers.py`, the operator's) sees only each trace's tuning part (first 60% of its time:"
        " token mix and highest 60 s load); every arm is replayed on the evaluation part after"
        f" {s['warmup'] / 60:g} minutes of warm-up, its replicas run by infleet's policy at stock settings, means"
        f" over cold-start seeds {', '.join(map(str, s['seeds']))} (`min`: the worst). `chooser on X` is the same"
        " chooser with one product allowed; the best single accelerator is the cheapest of those at >= 98%,"
        " picked with hindsight. The whole run took"
        f" {s['seconds']:.0f} s on {s['machine']['cpus']} shared cores (load average"
        f" {s['machine']['load_average_at_start'][0]:g} at the start, {s['machine']['load_average_at_end'][0]:g} at"
        " the end).",
        "",
        "The chooser's own figures (its line under each table) are its prediction at the forecast load with the"
        " roofline capacity of one replica; the tables are what the replay served with the fleet the policy sized to"
        " the live load. The gap between them is large, and where the roofline over-promises a product (the L4 at"
        " time scale 0.25) the chooser's pick misses the attainment: that is the latency model's error, reported"
        " here rather than tuned away on the evaluation part.",
        "",
    ]
    for scale, block in report["scales"].items():
        lines += [
            f"### Time scale {scale} (forecast {block['forecast_tokens_per_second']:.0f} tokens/s)",
            "",
            "| arm | runs | SLO attainment (mean / min) | GPU-hours | $/1M tokens | peak replicas |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for name, a in block["arms"].items():
            lines.append(
                f"| {name} | {a['tier']} on {SHORT[a['product']]} | {100 * a['slo_attainment']:.2f}% /"
                f" {100 * a['slo_attainment_min']:.2f}% | {a['gpu_hours']:.3f} | {a['cost_per_million_tokens']:.4f} |"
                f" {a['max_replicas']} |"
            )
        g = block["goal"]
        lines += [
            "",
            f"Chooser: {block['decisions']['chooser']}.",
            "",
            f"Best single accelerator: {block['best_fixed'] or 'none reaches 98%'}.",
            "",
            f"Goal (>= {GOAL_SAVING:.0%} below {REFERENCE} at the same attainment): "
            f"{'met' if g['met'] else 'not met'}: {g['line']}.",
            "",
        ]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", type=Path, default=AZURE_CODE_TRACE)
    p.add_argument("--time-scales", type=float, nargs="+", default=[1.0, 3.0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--docs-only", action="store_true", help="re-render the docs from the committed JSON, no run")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "autoscaler_accelerator.json"
    if args.docs_only:
        report = json.loads(path.read_text())
    else:
        report = run(args.trace, args.time_scales, args.seeds)
        path.write_text(json.dumps(report, indent=2) + "\n")
    section = markdown(report)
    update_docs(section, args.docs, "## Accelerator choice")
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
