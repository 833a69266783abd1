"""End to end on CPU: every tier serves SmolLM2 from the real server through the OpenAI client, and int8 stays
close to bf16 in perplexity and greedy tokens."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from infleet.runtime.quant import profile as P
from infleet.runtime.quant.tiers import TIERS, apply_tier

pytestmark = [pytest.mark.model, pytest.mark.slow]

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


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


@pytest.mark.parametrize("tier", TIERS)
def test_openai_client_against_each_tier_server(tier: str) -> None:
    """The real server process at each tier, through the official client; the tier shows in `/v1/models`."""
    openai = pytest.importorskip("openai")
    from infleet.runtime.loader.smollm2 import smollm2_gguf
    from infleet.runtime.server.launch import ServerProcess

    name = f"smollm2-{tier}"
    with ServerProcess(smollm2_gguf(), "--tier", tier, "--served-name", name, "--max-model-len", "512") as s:
        client = openai.OpenAI(base_url=f"{s.url}/v1", api_key="unused")
        [card] = client.models.list().data
        assert card.id == name
        assert card.model_extra is not None and card.model_extra["tier"] == tier
        reply = client.chat.completions.create(model=name, messages=QUESTION, max_tokens=12, temperature=0)
        assert "Paris" in (reply.choices[0].message.content or ""), f"{tier}: {reply.choices[0].message.content!r}"
