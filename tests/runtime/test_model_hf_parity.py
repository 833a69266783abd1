"""infleet's Llama and GGUF loader against transformers loading the same GGUF file (fp32 both)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from infleet.runtime.model.attention import AttentionMetadata, KVCache

pytestmark = pytest.mark.model

# fp32 on both sides; differences come only from summation order in matmuls and attention kernels.
LOGIT_ATOL = 2e-3

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a land far away,",
    "1, 2, 3, 4, 5,",
]


def _prefill_logits(model: Any, ids: list[int], block_size: int = 16) -> torch.Tensor:
    config = model.config
    nb = (len(ids) + block_size - 1) // block_size
    caches = [
        KVCache.allocate(nb, block_size, config.num_key_value_heads, config.head_dim, torch.float32)
        for _ in range(model.num_layers)
    ]
    meta = AttentionMetadata.build([len(ids)], [len(ids)], [list(range(nb))], block_size)
    with torch.inference_mode():
        hidden = model(torch.tensor(ids), torch.arange(len(ids)), caches, meta)
        return model.compute_logits(hidden)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_prefill_logits_match_transformers(smollm2: Any, hf_smollm2: Any, prompt: str) -> None:
    model, _, tokenizer = smollm2
    ids = tokenizer.encode(prompt)
    ours = _prefill_logits(model, ids)
    with torch.inference_mode():
        theirs = hf_smollm2(torch.tensor([ids])).logits[0].float()
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=LOGIT_ATOL, rtol=0), (ours - theirs).abs().max()
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))


def test_weights_match_transformers(smollm2: Any, hf_smollm2: Any) -> None:
    """The q/k un-permutation and name mapping give exactly transformers' tensors."""
    ours = dict(smollm2[0].named_parameters())
    theirs = dict(hf_smollm2.named_parameters())
    for name in (
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.7.self_attn.k_proj.weight",
        "model.layers.29.mlp.down_proj.weight",
        "model.embed_tokens.weight",
        "model.norm.weight",
    ):
        assert torch.equal(ours[name], theirs[name].float()), name


GREEDY_TOKENS = 24
CHAT = [
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Explain recursion to a five-year-old.",
    "List three uses of copper.",
    "Translate 'good morning' into Spanish and German.",
    "What is 17 times 23?",
    "Give me a short tip for writing clean Python code.",
    "Who wrote Pride and Prejudice?",
]
COMPLETIONS = [
    "Once upon a time",
    "The quick brown fox",
    "import numpy as np\n\ndef softmax(x):\n",
    "The theory of relativity states that",
    "1. Preheat the oven to 180 degrees.\n2.",
    "SELECT name, COUNT(*) FROM users",
    "Dear hiring manager,\n\nI am writing to",
    "La tour Eiffel est",
    "Q: What is photosynthesis?\nA:",
    "<html>\n<head>\n<title>",
    "In the year 2050, cities will",
    "The mitochondria is the powerhouse of the cell. " * 4,
]


def test_greedy_generations_match_transformers(smollm2: Any, hf_smollm2: Any) -> None:
    """20 varied prompts, generated together in one engine (batched, mixed lengths) vs transformers one by one.

    Both stop at the end-of-sequence token (transformers' `min_new_tokens` would instead ban it, changing the text).
    """
    from infleet.runtime.config import EngineConfig
    from infleet.runtime.engine.engine import LLMEngine
    from infleet.runtime.engine.sampler import SamplingParams

    model, config, tokenizer = smollm2
    prompts = [
        tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": q}]), add_special_tokens=False)
        for q in CHAT
    ] + [tokenizer.encode(t) for t in COMPLETIONS]
    assert len(prompts) >= 20
    engine = LLMEngine(model, config, tokenizer, EngineConfig(max_model_len=1024, max_num_seqs=32))
    ours = engine.generate(prompts, SamplingParams(max_tokens=GREEDY_TOKENS, temperature=0.0))
    mismatches = []
    for prompt, got in zip(prompts, ours, strict=True):
        with torch.inference_mode():
            out = hf_smollm2.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=GREEDY_TOKENS,
                do_sample=False,
                eos_token_id=config.eos_token_ids,
                pad_token_id=config.eos_token_ids[0],
            )
        expected = out[0, len(prompt) :].tolist()
        for i, token in enumerate(expected):  # both stop after the end-of-sequence token (and keep it)
            if token in config.eos_token_ids:
                expected = expected[: i + 1]
                break
        if got != expected:
            mismatches.append((tokenizer.decode(prompt), tokenizer.decode(got), tokenizer.decode(expected)))
    assert not mismatches, mismatches
    assert "Paris" in tokenizer.decode(ours[0])
