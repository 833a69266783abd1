"""End to end on CPU: every tier serves SmolLM2 (AsyncEngine, and the real server through the OpenAI client),
and int8 stays close to bf16 in perplexity and greedy tokens."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import pytest

from infleet.runtime.engine.engine import AsyncEngine, LLMEngine
from infleet.runtime.engine.sampler import SamplingParams
from infleet.runtime.quant import profile as P
from infleet.runtime.quant.tiers import TIERS, apply_tier

pytestmark = [pytest.mark.model, pytest.mark.slow]

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def _tier_engine(smollm2_float: tuple[Any, Any, Any], tier: str) -> AsyncEngine:
    model, config, tokenizer = smollm2_float
    quantized = apply_tier(copy.deepcopy(model), tier)
    engine = LLMEngine(quantized, config, tokenizer, max_model_len=256, max_num_seqs=4, num_kv_blocks=64)
    return AsyncEngine.from_engine(engine, tier=tier)


async def _answer(engine: AsyncEngine, prompt_ids: list[int]) -> str:
    ids: list[int] = []
    async for out in engine.generate(prompt_ids, SamplingParams(max_tokens=12, temperature=0.0), "q"):
        ids.extend(out.new_token_ids)
    await engine.shutdown(timeout=5)
    return str(engine.tokenizer.decode(ids))


@pytest.mark.parametrize("tier", TIERS)
def test_each_tier_answers_through_the_async_engine(smollm2_float: tuple[Any, Any, Any], tier: str) -> None:
    engine = _tier_engine(smollm2_float, tier)
    prompt = engine.tokenizer.encode(engine.tokenizer.apply_chat_template(QUESTION), add_special_tokens=False)
    text = asyncio.run(_answer(engine, prompt))
    assert engine.tier == tier
    assert "Paris" in text, f"{tier}: {text!r}"


def test_int8_stays_close_to_bf16(smollm2_float: tuple[Any, Any, Any]) -> None:
    model, _, tokenizer = smollm2_float
    text = tokenizer.encode((P.DATA / "eval_text.txt").read_text(), add_special_tokens=False)[:257]
    prompts = [tokenizer.encode(p) for p in json.loads((P.DATA / "prompts.json").read_text())[:4]]
    int8 = apply_tier(copy.deepcopy(model), "int8")
    base_ppl, int8_ppl = P.perplexity(model, text, 256), P.perplexity(int8, text, 256)
    assert int8_ppl / base_ppl < 1.02, (base_ppl, int8_ppl)
    # bf16's greedy continuations, teacher-forced through int8
    continuations = []
    for p in prompts:
        ids = list(p)
        for _ in range(12):
            ids.append(int(P.logits_for(model, ids)[-1].argmax()))
        continuations.append(ids[len(p) :])
    assert P.teacher_forced_match(int8, prompts, continuations) >= 0.9


def test_openai_client_against_the_int8_server() -> None:
    openai = pytest.importorskip("openai")
    from infleet.runtime.loader.smollm2 import smollm2_gguf
    from infleet.runtime.server.launch import ServerProcess

    with ServerProcess(
        smollm2_gguf(), "--tier", "int8", "--served-name", "smollm2-int8", "--max-model-len", "512"
    ) as s:
        client = openai.OpenAI(base_url=f"{s.url}/v1", api_key="unused")
        assert [m.id for m in client.models.list().data] == ["smollm2-int8"]
        reply = client.chat.completions.create(model="smollm2-int8", messages=QUESTION, max_tokens=12, temperature=0)
        assert "Paris" in (reply.choices[0].message.content or "")
