"""The cheapest accelerator per SLO, simulated: accelerator x tier chosen by the chooser against fixed fleets.

Llama-3.1-8B on the Azure LLM code trace (Splitwise, ISCA 2024; CC-BY 4.0), SLO TTFT p99 2 s and TPOT p99 100 ms,
roofline latency models of the L4, A100 and H100, prices from `DEFAULT_GPU_PRICES`, quality floor 0.01 (the
chooser's default quality losses: bf16 0, fp8 0.005, int8 0.01, int4 0.04, so int4 is out). Every arm's replicas are
run by infleet's autoscaling policy at its stock settings, and again held at the replica count the chooser planned for
the forecast load (a fixed fleet): the arms differ only in what the replicas are.

The protocol of docs/autoscaler-evaluation.md: each trace is split by time; the chooser (`tiers.choose_tier`, the
operator's own) sees only the tuning part (its token mix gives each option's capacity at the SLO, its highest
60 s load is the forecast), and its choice is replayed on the evaluation part, after the tuning part's last 15
minutes as unmeasured warm-up, with cold-start seeds 0, 1, 2. The arms:
- `chooser`: accelerator x tier x replicas over every allowed product;
- `chooser on <product>`: the same chooser with one product allowed (a fixed accelerator, tier still chosen);
- `bf16 on <product>`: fixed bf16 on one product; `bf16 on H100` is the reference of the goal;
- `cascade`: the cheapest int4 option answering every request, bf16 on H100 the escalated ones
  (`autoscaler/simulator/cascade.py`), at the escalation rate `benchmarks/cascade.py` measured on held-out rows.
"Best single fixed accelerator" is the cheapest `chooser on <product>` arm at the target attainment, picked with
hindsight on the evaluation part (a stricter rival than any a user could pick beforehand).

Goal (computed, can say "not met"): the chooser's (and the cascade's) $/1M tokens is >= 30% below `bf16 on H100`
while its attainment is at least the reference's (or >= 99%) minus the one-point band.

    python benchmarks/autoscaler_accelerator.py [--time-scales 0.25 1 3] [--seeds 0 1 2] [--out DIR]

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
from infleet.autoscaler.simulator import cascade
from infleet.autoscaler.simulator.baselines import Static
from infleet.autoscaler.simulator.experiment import describe as describe_workload
from infleet.autoscaler.simulator.experiment import make_policy, over_seeds, summarize
from infleet.autoscaler.simulator.fleet import Policy, SimConfig, simulate
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
CASCADE_STUDY = ROOT / "benchmarks" / "results" / "cascade.json"


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


def choose(
    tuning: list[TraceRequest], products: tuple[str, ...], config: SimConfig, only: str | None = None
) -> tiers.TierDecision:
    """The operator's chooser on the tuning part; `only` offers one tier alone, whatever its quality loss."""
    # the operator's own check: an A100 has no FP8 tensor cores, so fp8 is not offered there
    offered = [o for o in options(tuning, products, config) if o.tier != "fp8" or checks.supports_fp8(o.gpu)]
    if only is not None:
        offered = [o for o in offered if o.tier == only]
    floor = MAX_QUALITY_LOSS if only is None else tiers.DEFAULT_QUALITY_LOSS[only]
    return tiers.choose_tier(offered, forecast(tuning), floor, tiers.TierState(), now=0.0)


class Arm:
    """One (product, tier) deployment and how its replicas are run: by infleet's policy at its stock settings
    (`planned` None), or held at the chooser's plan for the forecast load (`planned` replicas, a fixed fleet)."""

    def __init__(self, product: str, tier: str, tuning_part: list[TraceRequest], planned: int | None) -> None:
        self.product, self.tier, self.planned = product, tier, planned
        self.model = LatencyModel(device(product), MODELS[MODEL], tier)
        self.workload = describe_workload(tuning_part, self.model, SimConfig(warmup=WARMUP))

    def policy(self) -> Policy:
        """A fresh policy (policies keep state between control ticks)."""
        if self.planned is not None:
            return Static(self.planned, name="planned")
        return make_policy("infleet", self.workload, SimConfig(warmup=WARMUP), self.model)

    @property
    def price(self) -> float:
        return DEFAULT_GPU_PRICES[self.product]

    @property
    def label(self) -> str:
        return f"{self.tier} on {SHORT[self.product]}" + (f" x{self.planned}" if self.planned is not None else "")


def fleet(decision: tiers.TierDecision, tuning_part: list[TraceRequest], planned: bool) -> Arm:
    """The chooser's product and tier, autoscaled or held at its planned replicas."""
    assert decision.gpu is not None and decision.tier is not None, decision.reason
    return Arm(decision.gpu, decision.tier, tuning_part, decision.replicas if planned else None)


def replay(arm: Arm, parts: Any, seeds: list[int], progress: str) -> dict[str, Any]:
    """One fixed (product, tier) fleet on the evaluation part with each cold-start seed."""
    rows = []
    for seed in seeds:
        config = SimConfig(seed=seed, warmup=WARMUP)
        started = time.monotonic()
        result = simulate(parts.evaluation, arm.model, arm.policy(), config, parts.before_evaluation)
        rows.append(summarize(result, config, arm.price))
        print(
            f"{progress} {arm.tier} on {SHORT[arm.product]} seed {seed}: {time.monotonic() - started:.1f}s, "
            f"attainment {rows[-1]['slo_attainment']:.2%}",
            file=sys.stderr,
        )
    return {"product": arm.product, "tier": arm.tier, "label": arm.label, **over_seeds(rows), "runs": rows}


def replay_cascade(first: Arm, second: Arm, rate: float, parts: Any, seeds: list[int], progress: str) -> dict[str, Any]:
    """The cascade first -> second on the evaluation part, each deployment run by its own policy."""
    rows = []
    for seed in seeds:
        config = SimConfig(seed=seed, warmup=WARMUP)
        result = cascade.simulate_cascade(
            parts.evaluation,
            (first.model, first.policy()),
            (second.model, second.policy()),
            config,
            rate,
            parts.before_evaluation,
        )
        rows.append(
            {
                "slo_attainment": round(result.slo_attainment, 5),
                "gpu_hours": round((result.first.gpu_seconds + result.second.gpu_seconds) / 3600, 4),
                "cost_per_million_tokens": round(result.cost_per_million_tokens(first.price, second.price), 5),
                "scale_events": result.first.scale_events + result.second.scale_events,
                "requests": result.measured,
                "escalated": result.escalated,
                "failed": result.failed,
                "max_replicas": max(result.first.timeline.replicas, default=0)
                + max(result.second.timeline.replicas, default=0),
            }
        )
        print(f"{progress} cascade seed {seed}: attainment {rows[-1]['slo_attainment']:.2%}", file=sys.stderr)
    label = f"{first.label} -> {second.label}"
    return {
        "product": first.product,
        "tier": first.tier,
        "label": label,
        "escalation_rate": rate,
        **over_seeds(rows),
        "runs": rows,
    }


def cascade_rate(path: Path = CASCADE_STUDY) -> float:
    """The escalation rate the cascade's threshold, chosen on the tuning rows, gave on the evaluation rows
    (`benchmarks/cascade.py`: SmolLM2 int4 -> bf16, where the cascade matched bf16's accuracy)."""
    return float(json.loads(path.read_text())["evaluation"]["chosen"]["escalation_rate"])


def goal(arms: dict[str, dict[str, Any]], name: str = "chooser") -> dict[str, Any]:
    ours, ref = arms[name], arms[REFERENCE]
    need = min(ref["slo_attainment"], TARGET) - BAND
    saving = 1 - ours["cost_per_million_tokens"] / ref["cost_per_million_tokens"]
    attained = ours["slo_attainment"] >= need
    met = attained and saving >= GOAL_SAVING
    why = (
        f"{name} ${ours['cost_per_million_tokens']:.4f}/1M at {ours['slo_attainment']:.2%} vs {REFERENCE}"
        f" ${ref['cost_per_million_tokens']:.4f}/1M at {ref['slo_attainment']:.2%}:"
        f" {abs(saving):.0%} {'lower' if saving >= 0 else 'higher'}"
        f" (goal >= {GOAL_SAVING:.0%}), attainment {'at least' if attained else 'below'} {need:.2%}"
    )
    return {"met": met, "saving": round(saving, 4), "attainment_needed": round(need, 4), "line": why}


def best_fixed(arms: dict[str, dict[str, Any]]) -> str | None:
    """The cheapest single-product chooser arm at the target attainment (hindsight on the evaluation part)."""
    at_target = [n for n in arms if n.startswith("chooser on ") and arms[n]["slo_attainment"] >= TARGET - BAND]
    return min(at_target, key=lambda n: arms[n]["cost_per_million_tokens"], default=None)


def run(trace_path: Path, scales: list[float], seeds: list[int]) -> dict[str, Any]:
    rate = cascade_rate()
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
            "cascade_escalation_rate": rate,
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
        for p in PRODUCTS:
            decisions[f"bf16 on {SHORT[p]}"] = choose(parts.tuning, (p,), config, only="bf16")
        # the cascade's first model: the cheapest int4 option (the cascade, not the quality floor, guards quality);
        # its second, bf16 on H100, planned for the escalated share of the tuning part
        decisions["cascade"] = choose(parts.tuning, PRODUCTS, config, only="int4")
        escalated = cascade.sample(parts.tuning, rate, seed=0)
        behind = choose(escalated, PRODUCTS[-1:], config, only="bf16")
        for name, d in [*decisions.items(), ("cascade, escalated", behind)]:
            assert d.gpu is not None and d.tier is not None, f"{name}: {d.reason}"
        block: dict[str, Any] = {
            "forecast_tokens_per_second": round(forecast(parts.tuning), 1),
            "decisions": {name: d.reason for name, d in decisions.items()} | {"cascade, escalated": behind.reason},
        }
        for variant in ("autoscaled", "planned"):
            tag = f"x{scale:g} {variant}"
            planned = variant == "planned"
            made = {name: fleet(d, parts.tuning, planned) for name, d in decisions.items()}
            runs: dict[str, dict[str, Any]] = {}  # one replay per distinct fleet, shared by the arms naming it
            arms: dict[str, dict[str, Any]] = {}
            for name, a in made.items():
                if name == "cascade":
                    continue
                if a.label not in runs:
                    runs[a.label] = replay(a, parts, seeds, tag)
                arms[name] = runs[a.label]
            second = fleet(behind, escalated, planned)
            arms["cascade"] = runs["cascade"] = replay_cascade(made["cascade"], second, rate, parts, seeds, tag)
            block[variant] = {
                "arms": {n: {k: v for k, v in a.items() if k != "runs"} for n, a in arms.items()},
                "replays": {label: r["runs"] for label, r in runs.items()},
                "best_fixed": best_fixed(arms),
                "goal": goal(arms),
                "cascade_goal": goal(arms, "cascade"),
            }
        report["scales"][f"{scale:g}"] = block
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
        f" {s['warmup'] / 60:g} minutes of warm-up, means over cold-start seeds {', '.join(map(str, s['seeds']))}"
        " (`min`: the worst). Each arm's fleet is run twice: **autoscaled**, its replicas run by infleet's policy at"
        " its stock settings, and **planned**, held at the replicas the chooser planned for the forecast load (a"
        " fixed fleet: `x N` in its name; the bf16 references are planned by the same chooser offered bf16 alone)."
        " `chooser on X` is the same chooser with one product allowed;"
        " the best single accelerator is the cheapest of those at >= 98%, picked with hindsight. The whole run"
        f" took {s['seconds']:.0f} s on {s['machine']['cpus']} shared cores (load average"
        f" {s['machine']['load_average_at_start'][0]:g} at the start, {s['machine']['load_average_at_end'][0]:g} at"
        " the end).",
        "",
        "`cascade` is the gateway's cascade simulated on the same fleet (`autoscaler/simulator/cascade.py`): every"
        " request answered whole by the cheapest int4 option, the escalated ones asked again of bf16 on an H100"
        " deployment of their own, arriving when the first answer is done; a request's TTFT runs from its arrival to"
        " the answering model's first token, so an escalated one pays for the whole first answer. The escalation"
        f" rate, {s['cascade_escalation_rate']:.1%}, is what the threshold chosen on labelled tuning rows did on"
        " evaluation rows it was not chosen on, where the cascade matched bf16's accuracy (`## Cascades on CPU`"
        " below: the quality proxy); requests escalate at random at that rate, whatever their size.",
        "",
        "The chooser's own figures (its line under each table) are its prediction at the forecast load with the"
        " roofline capacity of one replica; the tables are what the replay served: the autoscaled columns with the"
        " fleet the policy sized to the live load, the planned ones with the chooser's replica count held fixed.",
        "",
    ]
    for scale, block in report["scales"].items():
        auto, plan = block["autoscaled"], block["planned"]
        lines += [
            f"### Time scale {scale} (forecast {block['forecast_tokens_per_second']:.0f} tokens/s)",
            "",
            "| arm | autoscaled | attainment (mean / min) | GPU-hours | $/1M tokens | peak replicas | planned |"
            " attainment (mean / min) | $/1M tokens |",
            "|---|---|---:|---:|---:|---:|---|---:|---:|",
        ]
        for name, a in auto["arms"].items():
            b = plan["arms"][name]
            lines.append(
                f"| {name} | {a['label']} | {100 * a['slo_attainment']:.2f}% / {100 * a['slo_attainment_min']:.2f}% |"
                f" {a['gpu_hours']:.3f} | {a['cost_per_million_tokens']:.4f} | {a['max_replicas']} | {b['label']} |"
                f" {100 * b['slo_attainment']:.2f}% / {100 * b['slo_attainment_min']:.2f}% |"
                f" {b['cost_per_million_tokens']:.4f} |"
            )
        lines += ["", f"Chooser: {block['decisions']['chooser']}.", ""]
        for variant in ("autoscaled", "planned"):
            v = block[variant]
            lines += [
                f"- {variant}: best single accelerator {v['best_fixed'] or 'none (no arm reaches 98%)'}; goal"
                f" (>= {GOAL_SAVING:.0%} below {REFERENCE} at the same attainment):"
                f" chooser **{'met' if v['goal']['met'] else 'not met'}** ({v['goal']['line']}); cascade"
                f" **{'met' if v['cascade_goal']['met'] else 'not met'}** ({v['cascade_goal']['line']}).",
            ]
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", type=Path, default=AZURE_CODE_TRACE)
    p.add_argument("--time-scales", type=float, nargs="+", default=[0.25, 1.0, 3.0])
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
