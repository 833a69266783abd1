"""Each lever of infleet's policy alone, on the evaluation parts: the ablation of docs/benchmarks.md.

infleet's parameters are the ones its equal tuning chose (read from `benchmarks/results/autoscaler_eval.json`,
never re-tuned here); only the levers change: none, each one alone, all of them. Levers (`ScalingSpec`):
`saturation` (stop buying replicas that cannot raise attainment), `forecast` (Holt's linear trend of tokens/s,
lead = the cold start: pre-scaling), `queue-from-slo` (the queue target by Little's law on TTFT), `scale-to-zero`
(minReplicas 0, the gateway holds requests), `arrivals` (demand includes the requests arriving at the gateway, not
only the tokens served), `objective-guard` (a window's TTFT p99 buys no replica while attainment meets the SLO's
objective). `as evaluated` is the tuned policy itself. Cold-start seed 0, warm-up from the tuning part, as the
evaluation.

    python benchmarks/autoscaler_ablation.py [--trace FILE] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from infleet.autoscaler.cost import gpu_hourly_price
from infleet.autoscaler.latency_model import MODELS, LatencyModel, device
from infleet.autoscaler.simulator.experiment import summarize
from infleet.autoscaler.simulator.fleet import SimConfig, simulate
from infleet.autoscaler.simulator.infleet_policy import InfleetPolicy
from infleet.autoscaler.simulator.trace import AZURE_CODE_TRACE, split
from infleet.autoscaler.simulator.tuning import build, context_for

sys.path.insert(0, str(Path(__file__).resolve().parent))
from autoscaler_eval import GPU, MODEL, TIER, WARMUP, update_docs, workloads

ROOT = Path(__file__).resolve().parent.parent
OFF: dict[str, Any] = {
    "saturation": False,
    "forecast_lead": 0.0,
    "queue_from_slo": False,
    "min_replicas": 1,
    "arrivals": False,
    "objective": None,
}
LEVERS: dict[str, dict[str, Any]] = {
    "saturation": {"saturation": True},
    "forecast": {"forecast_lead": SimConfig.cold_start},
    "queue-from-slo": {"queue_from_slo": True},
    "scale-to-zero": {"min_replicas": 0},
    "arrivals": {"arrivals": True},
    "objective-guard": {"objective": SimConfig.objective},
}
VARIANTS: dict[str, dict[str, Any] | None] = {
    "as evaluated": None,  # the tuned policy, levers as the evaluation ran them
    "none": {},
    **{f"{name} alone": on for name, on in LEVERS.items()},
    "all": {k: v for on in LEVERS.values() for k, v in on.items()},
}


def ablate(name: str, params: dict[str, float], trace_path: Path) -> dict[str, Any]:
    model = LatencyModel(device(GPU), MODELS[MODEL], TIER)
    config = SimConfig(seed=0, warmup=WARMUP)
    parts = split(workloads(trace_path)[name])
    ctx = context_for(parts.tuning, model, config)
    out = {}
    for variant, on in VARIANTS.items():
        tuned = build("infleet", params, ctx)
        assert isinstance(tuned, InfleetPolicy)
        policy = tuned if on is None else replace(tuned, spec=replace(tuned.spec, **{**OFF, **on}))
        result = simulate(parts.evaluation, model, policy, config, parts.before_evaluation)
        out[variant] = summarize(result, config, gpu_hourly_price(GPU))
    return out


def markdown(report: dict[str, Any]) -> str:
    s = report["setup"]
    lines = [
        "## Autoscaler levers (ablation)",
        "",
        "`python benchmarks/autoscaler_ablation.py`: infleet with the parameters its equal tuning chose (not"
        " re-tuned), on each evaluation part with no lever, each lever alone, and all of them (cold-start seed 0)."
        " `saturation`: stop buying replicas that cannot raise attainment; `forecast`: Holt's linear trend of"
        f" tokens/s, {s['forecast_lead']:g} s ahead (the cold start); `queue-from-slo`: the queue target by Little's"
        " law on TTFT; `scale-to-zero`: minReplicas 0; `arrivals`: demand includes the requests arriving at the"
        " gateway, not only the tokens served; `objective-guard`: a window's TTFT p99 buys no replica while TTFT"
        " attainment meets the SLO's objective; `as evaluated`: the tuned policy as the evaluation ran it."
        " Tier-aware capacity is not in the simulator yet (one tier per"
        f" fleet), so it has no row. infleet's parameters come from a tuning of {s['tuning_trials']} trials. Took"
        f" {s['minutes']:.0f} minutes (load average {s['load_average']:.1f})."
        + (f" Note: {s['note']}." if s.get("note") else ""),
        "",
    ]
    for name, block in report["workloads"].items():
        lines += [
            f"### Ablation: {name}",
            "",
            "| levers | SLO attainment | GPU-hours | $/1M tokens | scale events | peak replicas |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for variant, r in block.items():
            lines.append(
                f"| {variant} | {100 * r['slo_attainment']:.2f}% | {r['gpu_hours']:.3f} |"
                f" {r['cost_per_million_tokens']:.4f} | {r['scale_events']} | {r['max_replicas']} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", type=Path, default=AZURE_CODE_TRACE)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--evaluation", type=Path, default=ROOT / "benchmarks" / "results" / "autoscaler_eval.json")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "autoscaler_ablation.json")
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--docs-only", action="store_true")
    args = p.parse_args()
    if args.docs_only:
        report = json.loads(args.out.read_text())
    else:
        source = json.loads(args.evaluation.read_text())
        evaluation = source["workloads"]
        started = time.monotonic()
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = {
                name: pool.submit(ablate, name, block["tuning"]["infleet"]["chosen"]["params"], args.trace)
                for name, block in evaluation.items()
            }
            blocks = {name: f.result() for name, f in futures.items()}
        report = {
            "setup": {
                "forecast_lead": SimConfig.cold_start,
                "minutes": round((time.monotonic() - started) / 60, 1),
                "load_average": round(os.getloadavg()[0], 2),
            },
            "workloads": blocks,
            "params": {name: block["tuning"]["infleet"]["chosen"]["params"] for name, block in evaluation.items()},
        }
        report["setup"]["tuning_trials"] = source["setup"]["trials"]
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    section = markdown(report)
    update_docs(section, args.docs, "## Autoscaler levers (ablation)")
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
