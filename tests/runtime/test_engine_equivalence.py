"""The engine's scheduling choices never change the tokens: batching, chunked prefill, prefix-cache hits and
preemption all give what each request gets alone (greedy, fp32, the real SmolLM2)."""

from __future__ import annotations

from typing import Any

import pytest

from infleet.runtime.config import EngineConfig
from infleet.runtime.engine.engine import LLMEngine
from infleet.runtime.engine.sampler import SamplingParams

pytestmark = pytest.mark.model

NEW_TOKENS = 16
SYSTEM = "You are a careful assistant. Answer in full sentences and explain your reasoning step by step. " * 2


def _prompts(tokenizer: Any) -> list[list[int]]:
    texts = [
        "Hi",
        "The three primary colors are",
        SYSTEM + "Question: why is the sky blue?",
        "def quicksort(xs):\n    if len(xs) <= 1:\n        return xs\n    pivot = xs[0]\n",
        SYSTEM + "Question: what is the boiling point of water at sea level?",
        "In 1969, the first humans landed on the Moon. The mission was called Apollo 11, and it " * 3,
    ]
    return [tokenizer.encode(t) for t in texts]


def _engine(smollm2: Any, **kwargs: Any) -> LLMEngine:
    model, config, tokenizer = smollm2
    kwargs.setdefault("max_model_len", 1024)
    kwargs.setdefault("max_num_seqs", 16)
    return LLMEngine(model, config, tokenizer, EngineConfig(**kwargs))


GREEDY = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def alone(smollm2: Any) -> list[list[int]]:
    """Reference: each prompt by itself, unchunked, no prefix cache."""
    engine = _engine(smollm2, prefix_caching=False, max_batch_tokens=1024)
    return [engine.generate([p], GREEDY)[0] for p in _prompts(smollm2[2])]


def test_mixed_batch_matches_each_request_alone(smollm2: Any, alone: list[list[int]]) -> None:
    engine = _engine(smollm2, prefix_caching=False, max_batch_tokens=1024)
    assert engine.generate(_prompts(smollm2[2]), GREEDY) == alone
    assert all(len(out) == NEW_TOKENS for out in alone)


def test_chunked_prefill_matches_unchunked(smollm2: Any, alone: list[list[int]]) -> None:
    engine = _engine(smollm2, prefix_caching=False, max_batch_tokens=24)  # long prompts take several steps
    assert engine.generate(_prompts(smollm2[2]), GREEDY) == alone


def test_prefix_cache_hits_match_misses(smollm2: Any, alone: list[list[int]]) -> None:
    engine = _engine(smollm2, prefix_caching=True, max_batch_tokens=1024)
    prompts = _prompts(smollm2[2])
    first = [engine.generate([p], GREEDY)[0] for p in prompts]  # prompts 2 and 4 share the system prefix
    hits_first = engine.stats().prefix_cache_hits
    assert hits_first > 0
    second = engine.generate(prompts, GREEDY)  # every prompt's full blocks are cached now
    stats = engine.stats()
    assert stats.prefix_cache_hits - hits_first >= sum((len(p) - 1) // 16 * 16 for p in prompts)
    assert first == alone and second == alone


def test_preemption_by_recompute_matches_no_preemption(smollm2: Any, alone: list[list[int]]) -> None:
    prompts = _prompts(smollm2[2])
    longest = max(len(p) for p in prompts) + NEW_TOKENS
    engine = _engine(smollm2, num_kv_blocks=-(-longest // 16) + 2, max_batch_tokens=1024, max_model_len=longest)
    assert engine.generate(prompts, GREEDY) == alone
    assert engine.stats().preemptions > 0
    assert engine.stats().kv_cache_usage == 0.0  # every block came back
