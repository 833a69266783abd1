"""`infleet autoscaler simulate --trace FILE [--policy NAME|all] [--time-scale X] [--gpu TYPE] [--out DIR]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from infleet.autoscaler.latency_model import MODELS, TIER_BYTES, LatencyModel, device
from infleet.autoscaler.simulator import calibration
from infleet.autoscaler.simulator.experiment import POLICIES, compare
from infleet.autoscaler.simulator.fleet import SimConfig
from infleet.autoscaler.simulator.report import plot, table, write_results
from infleet.autoscaler.simulator.trace import TraceError, load_trace


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="infleet autoscaler", description="infleet's autoscaler tools")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("simulate", help="replay a request trace against a simulated fleet under each policy")
    s.add_argument("--trace", required=True, help="CSV (TIMESTAMP,ContextTokens,GeneratedTokens) or JSONL")
    s.add_argument("--policy", default="all", help=f"one of {', '.join(POLICIES)}, or all")
    s.add_argument("--time-scale", type=float, default=1.0, help="replay X times faster (X > 1 raises the load)")
    s.add_argument("--gpu", default="NVIDIA-L4", help="nvidia.com/gpu.product value, or H100, A100, L4")
    s.add_argument("--model", default="llama-3.1-8b", choices=sorted(MODELS))
    s.add_argument("--tier", default="fp8", choices=sorted(TIER_BYTES))
    s.add_argument("--ttft-slo", type=float, default=2.0, help="seconds (MLPerf server value for Llama-3.1-8B)")
    s.add_argument("--tpot-slo", type=float, default=0.1, help="seconds")
    s.add_argument(
        "--latency-profile",
        help="a CPU latency profile (infleet.latency-profile/v1, python -m infleet.autoscaler.simulator.calibration) "
        "instead of the roofline of --model on --gpu; replicas are still priced as --gpu",
    )
    s.add_argument("--cold-start", type=float, default=30.0, help="seconds from scale-up to a ready replica")
    s.add_argument("--warmup", type=float, default=900.0, help="seconds of the trace's end replayed first, unmeasured")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="simulation", help="directory for results.json and the PNGs")
    return p


def say(line: str) -> None:
    """Progress on stderr, so that stdout stays the result table."""
    print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    names = list(POLICIES) if args.policy == "all" else [args.policy]
    if any(n not in POLICIES for n in names):
        print(f"infleet autoscaler: unknown policy {args.policy!r}; known: {', '.join(POLICIES)}, all", file=sys.stderr)
        return 2
    try:
        trace = load_trace(args.trace, args.time_scale)
        model: LatencyModel
        if args.latency_profile:
            model = calibration.load(args.latency_profile, device_name=device(args.gpu).name)
        else:
            model = LatencyModel(device(args.gpu), MODELS[args.model], args.tier)
        config = SimConfig(
            ttft_slo=args.ttft_slo,
            tpot_slo=args.tpot_slo,
            cold_start=args.cold_start,
            warmup=args.warmup,
            seed=args.seed,
        )
    except (TraceError, KeyError, ValueError) as err:
        print(f"infleet autoscaler: {err}", file=sys.stderr)
        return 2
    try:
        summary, results, workload = compare(
            trace, model, config, names, progress=lambda line: print(line, file=sys.stderr)
        )
    except ValueError as err:
        print(f"infleet autoscaler: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    meta = {"args": vars(args), "capacity_tokens_per_second": workload.capacity, "workload": workload.__dict__}
    path = write_results(out, summary, meta)
    plot(out, trace, results, config)
    print(table(summary))
    print(f"wrote {path} and PNGs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
