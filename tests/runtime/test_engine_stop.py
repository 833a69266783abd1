"""Stop conditions: stop strings across token boundaries are trimmed and never streamed; stop ids and eos."""

from __future__ import annotations

from typing import Any

from infleet.runtime.config import EngineConfig
from infleet.runtime.engine.engine import LLMEngine, RequestOutput, _holdback
from infleet.runtime.engine.sampler import SamplingParams


def run(tiny_llama: Any, prompt: list[int], params: SamplingParams) -> list[RequestOutput]:
    model, config, tokenizer = tiny_llama
    engine = LLMEngine(model, config, tokenizer, EngineConfig(max_model_len=256))
    engine.add_request("r", prompt, params)
    outs: list[RequestOutput] = []
    while engine.has_unfinished():
        outs.extend(engine.step())
    assert engine.stats().kv_cache_usage == 0.0
    return outs


def test_holdback_keeps_only_possible_stop_prefixes() -> None:
    assert _holdback("hello wor", ["world"]) == 3
    assert _holdback("hello", ["xyz"]) == 0
    assert _holdback("ab", ["abc", "bcd"]) == 2
    assert _holdback("", ["abc"]) == 0


def test_stop_string_spanning_tokens_is_trimmed_and_never_emitted(tiny_llama: Any) -> None:
    tokenizer = tiny_llama[2]
    prompt = tokenizer.encode("Once upon a time")
    free = run(tiny_llama, prompt, SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True))
    pieces = [o.new_text for o in free]
    full = "".join(pieces)
    # a stop string made of the last 2 characters of one token's text and the first 2 of the next one's
    boundary = next(
        sum(len(p) for p in pieces[: i + 1])
        for i in range(3, len(pieces) - 1)
        if len(pieces[i].strip()) >= 2 and len(pieces[i + 1].strip()) >= 2
    )
    stop = full[boundary - 2 : boundary + 2]
    cut = full.find(stop)
    outs = run(tiny_llama, prompt, SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True, stop=[stop]))
    streamed = "".join(o.new_text for o in outs)
    assert streamed == full[:cut]
    assert outs[-1].finished and outs[-1].finish_reason == "stop"
    assert all(stop not in streamed[: i + 1] for i in range(len(streamed)))


def test_stop_token_ids_and_eos(tiny_llama: Any) -> None:
    tokenizer = tiny_llama[2]
    prompt = tokenizer.encode("Once upon a time")
    free = run(tiny_llama, prompt, SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True))
    ids = [t for o in free for t in o.new_token_ids]
    outs = run(tiny_llama, prompt, SamplingParams(max_tokens=10, temperature=0.0, stop_token_ids=[ids[4]]))
    got = [t for o in outs for t in o.new_token_ids]
    assert got == ids[: ids.index(ids[4]) + 1]  # the stop token is reported as a token, not as text
    assert outs[-1].finish_reason == "stop"
    assert "".join(o.new_text for o in outs) == tokenizer.decode(got[:-1])
