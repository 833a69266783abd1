"""`infleet cascade calibrate`: the escalation threshold of a cascade, chosen on a labelled sample.

Each sample line is a chat (`messages`) or a `prompt` with its `expected` answer (an answer is right when it contains
`expected`, case-insensitive). Every model of the chain answers every sample once (greedy, with token logprobs,
through any OpenAI endpoint: the gateway, or a replica). From those answers the cascade is replayed offline for every
candidate threshold: a model's answer is passed on when its signal (mean or first token logprob) is below the
threshold. Each threshold gets its accuracy, escalation rate and cost (every model asked is paid, at its price per
million tokens); the chosen one is the cheapest whose accuracy reaches `--quality` x the last model's alone. Always
escalating is a candidate, so a choice always exists; `met` says whether it is cheaper than the last model alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SIGNALS = {"mean": "minMeanLogprob", "first": "minFirstTokenLogprob"}


@dataclass(frozen=True)
class Answer:
    """One model's answer to one sample."""

    right: bool
    tokens: int  # prompt + completion
    mean_logprob: float
    first_logprob: float

    def signal(self, kind: str) -> float:
        return self.mean_logprob if kind == "mean" else self.first_logprob


@dataclass(frozen=True)
class Point:
    threshold: float | None  # None: never escalate
    accuracy: float
    escalation_rate: float  # share of requests the first model passed on
    dollars_per_request: float
    relative_cost: float  # against the last model answering everything alone


def replay(answers: Sequence[Sequence[Answer]], prices: Sequence[float], kind: str, threshold: float | None) -> Point:
    """The cascade at `threshold` over the sample: answers[i][m] is model m's answer to sample i."""
    right, escalated, dollars = 0, 0, 0.0
    for per_model in answers:
        for m, a in enumerate(per_model):
            dollars += a.tokens * prices[m] / 1e6
            last = m == len(per_model) - 1
            if last or threshold is None or a.signal(kind) >= threshold:
                right += a.right
                escalated += m > 0
                break
    n = len(answers)
    alone = sum(per_model[-1].tokens * prices[-1] / 1e6 for per_model in answers)
    return Point(threshold, right / n, escalated / n, dollars / n, dollars / alone if alone else float("nan"))


def curve(answers: Sequence[Sequence[Answer]], prices: Sequence[float], kind: str) -> list[Point]:
    """Every threshold that changes a decision, from never escalating to always (0: every logprob is below it)."""
    values = sorted({a.signal(kind) for per_model in answers for a in per_model[:-1]})
    candidates: list[float | None] = [None, *(v for v in values if v < 0), 0.0]
    return [replay(answers, prices, kind, t) for t in candidates]


def choose(points: Sequence[Point], target: float) -> Point:
    """The cheapest point whose accuracy reaches `target` (the last point, always escalating, when none cheaper)."""
    feasible = [p for p in points if p.accuracy >= target - 1e-12]
    return min(feasible or [points[-1]], key=lambda p: (p.dollars_per_request, -p.accuracy))


def ask(client: Any, model: str, sample: dict[str, Any], max_tokens: int) -> Answer:
    """One greedy answer with logprobs from an OpenAI endpoint."""
    common = {"model": model, "max_tokens": sample.get("max_tokens", max_tokens), "temperature": 0}
    if "messages" in sample:
        reply = client.chat.completions.create(messages=sample["messages"], logprobs=True, **common)
        choice = reply.choices[0]
        text = choice.message.content or ""
        logprobs = [t.logprob for t in (choice.logprobs.content if choice.logprobs else None) or []]
    else:
        reply = client.completions.create(prompt=sample["prompt"], logprobs=1, **common)
        choice = reply.choices[0]
        text = choice.text
        logprobs = [v for v in (choice.logprobs.token_logprobs if choice.logprobs else None) or [] if v is not None]
    usage = reply.usage
    tokens = (usage.prompt_tokens + usage.completion_tokens) if usage else 0
    mean = sum(logprobs) / len(logprobs) if logprobs else float("-inf")
    first = logprobs[0] if logprobs else float("-inf")
    return Answer(str(sample["expected"]).lower() in text.lower(), tokens, mean, first)


def read_sample(path: Path) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row, dict) or "expected" not in row or ("messages" not in row and "prompt" not in row):
            raise ValueError(f"{path}:{n}: each line needs `expected` and `messages` or `prompt`")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no samples")
    return rows


def parse_prices(items: Sequence[str], models: Sequence[str]) -> list[float]:
    given = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--price {item!r}: expected MODEL=DOLLARS_PER_MILLION_TOKENS")
        given[name] = float(value)
    missing = [m for m in models if m not in given]
    if missing:
        raise ValueError(f"--price is missing for {', '.join(missing)} (status.costPerMillionTokens has it)")
    return [given[m] for m in models]


def table(points: Sequence[Point], chosen: Point) -> str:
    lines = ["threshold   accuracy  escalated  $/request     vs last alone"]
    for p in points:
        t = "never" if p.threshold is None else f"{p.threshold:.3f}"
        mark = "  <- chosen" if p is chosen else ""
        lines.append(
            f"{t:>9}   {p.accuracy:8.1%}  {p.escalation_rate:9.1%}  {p.dollars_per_request:.3e}  "
            f"{p.relative_cost:13.2f}{mark}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infleet cascade", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cal = sub.add_parser("calibrate", help="choose a cascade's threshold on a labelled sample")
    cal.add_argument("--url", required=True, help="an OpenAI endpoint, e.g. the gateway's http://HOST:PORT/v1")
    cal.add_argument("--models", nargs="+", required=True, help="the chain's served names, cheapest first")
    cal.add_argument("--price", action="append", default=[], help="MODEL=$ per 1M tokens (one per model)")
    cal.add_argument("--sample", type=Path, required=True, help="JSON lines: messages or prompt, and expected")
    cal.add_argument("--signal", choices=sorted(SIGNALS), default="mean")
    cal.add_argument("--quality", type=float, default=1.0, help="accuracy to keep, as a share of the last model's")
    cal.add_argument("--max-tokens", type=int, default=32)
    cal.add_argument("--api-key", default="unused")
    cal.add_argument("--out", type=Path, help="write the curve and the choice as JSON")
    args = parser.parse_args(argv)
    if len(args.models) < 2 or not 0 < args.quality <= 1:
        print("infleet cascade: --models needs two or more names, and --quality is in (0, 1]", file=sys.stderr)
        return 2
    try:
        prices = parse_prices(args.price, args.models)
        samples = read_sample(args.sample)
    except (OSError, ValueError) as e:
        print(f"infleet cascade: {e}", file=sys.stderr)
        return 2
    import openai

    client = openai.OpenAI(base_url=args.url, api_key=args.api_key, max_retries=2, timeout=300)
    try:
        answers = [[ask(client, m, s, args.max_tokens) for m in args.models] for s in samples]
    except openai.APIError as e:
        print(f"infleet cascade: the endpoint refused a request: {e}", file=sys.stderr)
        return 1
    points = curve(answers, prices, args.signal)
    target = args.quality * sum(a[-1].right for a in answers) / len(answers)
    chosen = choose(points, target)
    print(table(points, chosen))
    met = chosen.relative_cost < 1.0
    summary = f"chosen: {SIGNALS[args.signal]}: {chosen.threshold} (accuracy {chosen.accuracy:.1%} >= {target:.1%})"
    print(summary + ("" if met else "; no threshold is cheaper than the last model alone at that accuracy"))
    if args.out:
        out = {"models": args.models, "prices": prices, "signal": args.signal, "target_accuracy": target}
        out |= {"curve": [asdict(p) for p in points], "chosen": asdict(chosen), "cheaper_than_last_alone": met}
        args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
