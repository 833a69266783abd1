"""A cascade's cost at equal quality, measured: SmolLM2 int4 answering first, SmolLM2 bf16 when int4 is unsure,
against bf16 answering everything, on this machine's CPU.

    python benchmarks/cascade.py [--rounds 3] [--out benchmarks/results/cascade.json]

The labelled sample (capitals and two-number sums, fixed below) is split before anything runs: even rows tune the
threshold (`infleet cascade calibrate`'s replay, quality 1.0: accuracy at least bf16's on the tuning rows), odd
rows are the evaluation, never used to choose anything. Both models answer every row once (greedy, with logprobs,
interleaved). Each model's price per million tokens comes from its own throughput measured in the same run
(`rounds` interleaved rounds of a closed loop, median): one CPU-hour price over tokens per hour, so the ratio of the
two prices is the ratio of measured throughputs. The goal (the cascade's $/request on the evaluation rows at most
0.7x bf16 alone, at accuracy no lower than bf16's) is judged by `goals()`, which can say "not met".
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import random
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import openai

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from autoscaler_eval import update_docs  # noqa: E402

from infleet.gateway import calibrate  # noqa: E402
from infleet.runtime.loader.smollm2 import smollm2_gguf  # noqa: E402
from infleet.runtime.server.launch import ServerProcess  # noqa: E402

SMALL, BIG = "int4", "bf16"
CPU_DOLLARS_PER_HOUR = 0.10  # any price: only the ratio of the two models' prices enters the comparison
GOAL_RELATIVE_COST = 0.7
CAPITALS = [
    ("France", "Paris"), ("Italy", "Rome"), ("Germany", "Berlin"), ("Japan", "Tokyo"), ("Spain", "Madrid"),
    ("Egypt", "Cairo"), ("Russia", "Moscow"), ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Austria", "Vienna"),
    ("Ireland", "Dublin"), ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Poland", "Warsaw"), ("Canada", "Ottawa"),
    ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Chile", "Santiago"), ("Cuba", "Havana"), ("Finland", "Helsinki"),
    ("Hungary", "Budapest"), ("Belgium", "Brussels"), ("Denmark", "Copenhagen"), ("Thailand", "Bangkok"),
]  # fmt: skip


def sample(seed: int = 20261206) -> list[dict[str, Any]]:
    """The labelled rows, fixed before any run: capitals, then sums of two numbers under 50."""
    rows = [
        {"messages": [{"role": "user", "content": f"What is the capital of {c}? Answer in one word."}], "expected": a}
        for c, a in CAPITALS
    ]
    rng = random.Random(seed)
    for _ in range(24):
        a, b = rng.randrange(2, 50), rng.randrange(2, 50)
        question = f"What is {a} + {b}? Answer with the number only."
        rows.append({"messages": [{"role": "user", "content": question}], "expected": str(a + b)})
    return rows


def throughput(url: str, concurrency: int = 4, requests: int = 12) -> float:
    """Tokens (prompt + completion) per second served in a closed loop of `concurrency` clients."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    prompts = [r["messages"] for r in sample()[:requests]]

    def one(messages: Any) -> int:
        reply = client.chat.completions.create(model="m", messages=messages, max_tokens=24, temperature=0)
        usage = reply.usage
        return (usage.prompt_tokens + usage.completion_tokens) if usage else 0

    start = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(one, prompts))
    return tokens / (time.perf_counter() - start)


def goals(evaluation: dict[str, Any]) -> dict[str, Any]:
    chosen, alone = evaluation["chosen"], evaluation["big_alone"]
    cheaper = chosen["relative_cost"] <= GOAL_RELATIVE_COST
    as_good = chosen["accuracy"] >= alone["accuracy"]
    return {
        "relative_cost": chosen["relative_cost"],
        "accuracy": chosen["accuracy"],
        "big_alone_accuracy": alone["accuracy"],
        "goal": f"cost <= {GOAL_RELATIVE_COST}x bf16 alone at accuracy >= bf16's (evaluation rows)",
        "met": cheaper and as_good,
    }


def run(rounds: int) -> dict[str, Any]:
    rows = sample()
    tune, held_out = rows[0::2], rows[1::2]
    gguf = smollm2_gguf()
    loads = [os.getloadavg()[0]]
    with (
        ServerProcess(gguf, "--served-name", "m", "--tier", SMALL) as small,
        ServerProcess(gguf, "--served-name", "m", "--tier", BIG) as big,
    ):
        servers = {SMALL: small, BIG: big}
        rates: dict[str, list[float]] = {SMALL: [], BIG: []}
        for r in range(rounds):  # interleaved, the order alternating
            for tier in (SMALL, BIG) if r % 2 == 0 else (BIG, SMALL):
                rates[tier].append(throughput(servers[tier].url))
                loads.append(os.getloadavg()[0])
        clients = {t: openai.OpenAI(base_url=f"{s.url}/v1", api_key="unused", timeout=600) for t, s in servers.items()}
        answers = []
        for row in rows:
            answers.append([calibrate.ask(clients[t], "m", row, max_tokens=12) for t in (SMALL, BIG)])
        loads.append(os.getloadavg()[0])
    median = {t: statistics.median(v) for t, v in rates.items()}
    prices = [CPU_DOLLARS_PER_HOUR * 1e6 / (3600 * median[t]) for t in (SMALL, BIG)]
    tuned = answers[0::2]
    target = sum(a[-1].right for a in tuned) / len(tuned)
    chosen = calibrate.choose(calibrate.curve(tuned, prices, "mean"), target)
    evaluated = answers[1::2]
    evaluation = {
        "chosen": asdict(calibrate.replay(evaluated, prices, "mean", chosen.threshold)),
        "big_alone": asdict(calibrate.replay([[a[-1]] for a in evaluated], prices[-1:], "mean", None)),
        "small_alone": asdict(calibrate.replay(evaluated, prices, "mean", None)),
        "curve": [asdict(p) for p in calibrate.curve(evaluated, prices, "mean")],
    }
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "load_average": [min(loads), max(loads)]},
        "rows": {"tune": len(tune), "evaluate": len(held_out)},
        "throughput_tokens_per_s": {
            t: {"median": median[t], "min": min(v), "max": max(v), "rounds": v} for t, v in rates.items()
        },
        "dollars_per_million_tokens": dict(zip((SMALL, BIG), prices, strict=True)),
        "tuned": {"threshold": chosen.threshold, "target_accuracy": target, "point": asdict(chosen)},
        "evaluation": evaluation,
        "goals": goals(evaluation),
    }


def section(report: dict[str, Any]) -> str:
    ev, g, tp = report["evaluation"], report["goals"], report["throughput_tokens_per_s"]
    lo, hi = report["machine"]["load_average"]
    threshold = report["tuned"]["threshold"]
    lines = [
        "## Cascades on CPU",
        "",
        "`python benchmarks/cascade.py` (`make bench-cascade`) serves SmolLM2-135M-Instruct at int4 and at bf16 side",
        "by side, measures each one's throughput in interleaved rounds, has both answer a fixed labelled sample",
        f"(capitals and sums) and replays the cascade int4 -> bf16. The threshold is chosen on the even rows "
        f"({report['rows']['tune']}), the figures below are the odd rows ({report['rows']['evaluate']}), never used "
        "to choose. Prices are one CPU-hour price over each model's measured tokens per second, so only their ratio "
        "enters.",
        "",
        f"`benchmarks/results/cascade.json` ({report['date']}, load average {lo:.1f}-{hi:.1f} on "
        f"{report['machine']['cpus']} cores):",
        "",
        "| | tokens/s (median, min-max) | $ per 1M tokens |",
        "|---|---:|---:|",
    ]
    for tier, price in report["dollars_per_million_tokens"].items():
        t = tp[tier]
        lines.append(f"| {tier} | {t['median']:.1f} ({t['min']:.1f}-{t['max']:.1f}) | {price:.3f} |")
    lines += [
        "",
        "| on the evaluation rows | accuracy | escalated | $ per request | vs bf16 alone |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, key in (("int4 alone", "small_alone"), ("bf16 alone", "big_alone"), ("cascade", "chosen")):
        p = ev[key]
        lines.append(
            f"| {label} | {p['accuracy']:.1%} | {p['escalation_rate']:.1%} | {p['dollars_per_request']:.3e} | "
            f"{p['relative_cost']:.2f}x |"
        )
    verdict = "**met**" if g["met"] else "**not met**"
    lines += [
        "",
        f"Threshold chosen on the tuning rows: minMeanLogprob {threshold}. Goal ({g['goal']}): "
        f"{g['relative_cost']:.2f}x at {g['accuracy']:.1%} against bf16's {g['big_alone_accuracy']:.1%}, {verdict}.",
        f"A cascade costs at least its first model alone ({ev['small_alone']['relative_cost']:.2f}x here): with the "
        "two tiers' CPU throughputs this close, no threshold can reach the goal on this machine; the margin depends "
        "on how much cheaper the first model serves, which on GPUs is the tier profiles' question (not measured here).",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cascade.json")
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--docs-only", action="store_true", help="re-render the docs from the committed JSON, no run")
    args = p.parse_args()
    report = json.loads(args.out.read_text()) if args.docs_only else run(args.rounds)
    if not args.docs_only:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    update_docs(section(report), args.docs, "## Cascades on CPU")
    print(section(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
