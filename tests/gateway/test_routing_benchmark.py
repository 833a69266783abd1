"""The routing benchmark's machinery (benchmarks/routing.py) without replicas: its workload defeats the character
ring where it says it does, its oracle replays the runtime's block manager exactly, and its goals can say "not met"."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

from infleet.gateway.prompts import openai_prompt
from infleet.gateway.routing import DEFAULT_PREFIX_CHARS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench() -> Any:
    spec = importlib.util.spec_from_file_location("routing_benchmark", ROOT / "benchmarks" / "routing.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def ring_key(messages: list[dict[str, str]]) -> str:
    return openai_prompt({"messages": messages})[:DEFAULT_PREFIX_CHARS]  # type: ignore[index]


def test_the_workload_shares_and_differs_where_it_says(bench: Any) -> None:
    items = bench.workload(seed=7, context_tokens=64, contexts=3, per_context=2)
    assert sorted({(i.cls, i.context) for i in items}) == sorted(
        (cls, f"{cls}{c}") for cls in bench.CLASSES for c in range(3)
    )
    assert sum(len(i.turns) for i in items) == 3 * 3 * 2
    by_class: dict[str, set[str]] = {}
    for item in items:
        for messages in item.turns:
            by_class.setdefault(item.cls, set()).add(ring_key(messages))
    # chat and fewshot: one ring key for all their different long contexts; header: one key per customer
    assert len(by_class["chat"] | by_class["fewshot"]) == 1
    assert len(by_class["header"]) == 3
    # a conversation's turns extend each other; a new seed writes new texts (no run reuses another's cache)
    chat = next(i for i in items if i.cls == "chat")
    assert chat.turns[1][: len(chat.turns[0])] == chat.turns[0]
    again = bench.workload(seed=7, context_tokens=64, contexts=3, per_context=2)
    other = bench.workload(seed=8, context_tokens=64, contexts=3, per_context=2)
    assert [i.turns for i in again] == [i.turns for i in items]
    texts = {m["content"] for i in items for t in i.turns for m in t}
    assert not texts & {m["content"] for i in other for t in i.turns for m in t if len(m["content"]) > 100}


def test_a_warm_up_request_holds_its_context_and_not_the_question(bench: Any) -> None:
    items = bench.workload(seed=3, context_tokens=64, contexts=2, per_context=2)
    for item in items:
        warm = openai_prompt({"messages": item.warmup})
        assert isinstance(warm, str) and bench.WARMUP_QUESTION in warm
        for messages in item.turns:
            prompt = openai_prompt({"messages": messages})
            assert isinstance(prompt, str)
            # every measured turn starts with the warm-up's whole context, then asks its own question
            context = warm[: warm.index(bench.WARMUP_QUESTION)]
            assert prompt.startswith(context) and len(context) > 64
            assert bench.WARMUP_QUESTION not in prompt
    # one warm-up per context: items of one context carry the same one
    by_context: dict[str, list[Any]] = {}
    for item in items:
        by_context.setdefault(item.context, []).append(item.warmup)
    assert all(all(w == ws[0] for w in ws) for ws in by_context.values())


def test_the_oracle_replays_the_runtime_block_manager(bench: Any) -> None:
    a, b = list(range(100, 112)), list(range(200, 212))  # three 4-token blocks each
    # a on some replica (miss), a again there: (12 - 1) // 4 = 2 blocks served (the last token is always computed)
    assert bench.oracle_hit_rate([a, a], [0, 0], replicas=2, num_blocks=16, block_size=4) == pytest.approx(8 / 24)
    # with a cache of 4 blocks a replica holds one prompt: b on the other replica keeps a cached where it was
    rate = bench.oracle_hit_rate([a, b, a, b], [0, 0, 0, 0], replicas=2, num_blocks=4, block_size=4)
    assert rate == pytest.approx(16 / 48)
    # one replica of 4 blocks: each prompt evicts the other's tail (the runtime frees a prefix tail first), so only
    # first blocks are reused
    rate = bench.oracle_hit_rate([a, b, a, b], [0, 0, 0, 0], replicas=1, num_blocks=4, block_size=4)
    assert rate == pytest.approx(8 / 48)
    # the load bound: a third request for a goes elsewhere once its replica has more than its share
    three = bench.oracle_hit_rate([a, a, a, a], [0] * 4, replicas=2, num_blocks=16, block_size=4)
    assert three == pytest.approx(16 / 48)
    # a warm-up fills the caches without counting: a, b warmed, then a and b again both find 8 of 12 tokens
    warmed = bench.oracle_hit_rate([a, b, a, b], [0] * 4, replicas=2, num_blocks=16, block_size=4, counted_from=2)
    assert warmed == pytest.approx(16 / 24)


def spread(lo: float, hi: float) -> dict[str, float]:
    return {"median": (lo + hi) / 2, "min": lo, "max": hi}


def summary(
    hit: float, oracle: float, p99: float, header_p50: tuple[float, float], header_p99: tuple[float, float]
) -> dict[str, Any]:
    return {
        "hit_rate": spread(hit, hit),
        "oracle_hit_rate": spread(oracle, oracle),
        "ttft_p99_s": spread(p99, p99),
        "by_class": {"header": {"ttft_p50_s": spread(*header_p50), "ttft_p99_s": spread(*header_p99)}},
    }


def test_goals_can_say_not_met(bench: Any) -> None:
    least = summary(0.2, 0.6, 4.0, (1.0, 2.0), (3.0, 5.0))
    ring = summary(0.3, 0.6, 3.0, (0.2, 0.3), (3.0, 6.0))
    good = {"kvAware": summary(0.6, 0.62, 1.0, (0.2, 0.3), (0.3, 0.7)), "ring": ring, "leastOutstanding": least}
    assert all(g["met"] for g in bench.goals(good).values())
    bad = {"kvAware": summary(0.4, 0.62, 3.0, (0.6, 0.6), (0.6, 0.7)), "ring": ring, "leastOutstanding": least}
    assert not any(g["met"] for g in bench.goals(bad).values())


@pytest.mark.parametrize(
    ("header_p50", "header_p99", "met"),
    [
        ((0.2, 0.3), (0.3, 0.7), True),  # the tail lower in every repeat, the p50s overlapping: met
        ((0.2, 0.3), (0.3, 3.5), False),  # kvAware's worst repeat's p99 above the ring's best: no evidence
        ((0.35, 0.5), (0.3, 0.7), False),  # the tail lower but every p50 worse than the ring's worst
    ],
)
def test_the_header_goal_needs_the_tail_lower_in_every_repeat_and_the_p50_no_worse(
    bench: Any, header_p50: tuple[float, float], header_p99: tuple[float, float], met: bool
) -> None:
    arms = {
        "kvAware": summary(0.6, 0.62, 1.0, header_p50, header_p99),
        "ring": summary(0.3, 0.6, 3.0, (0.2, 0.3), (3.0, 6.0)),
        "leastOutstanding": summary(0.2, 0.6, 4.0, (1.0, 2.0), (3.0, 5.0)),
    }
    assert bench.goals(arms)["header_ttft_vs_ring"]["met"] is met


def test_the_header_goal_is_not_met_without_header_contexts(bench: Any) -> None:
    arms = {
        "kvAware": summary(0.6, 0.62, 1.0, (0.2, 0.3), (0.3, 0.7)),
        "ring": summary(0.3, 0.6, 3.0, (0.2, 0.3), (3.0, 6.0)),
        "leastOutstanding": summary(0.2, 0.6, 4.0, (1.0, 2.0), (3.0, 5.0)),
    }
    arms["kvAware"]["by_class"] = {}
    assert bench.goals(arms)["header_ttft_vs_ring"]["met"] is False
