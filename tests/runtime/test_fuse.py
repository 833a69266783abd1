"""Fused projections (q/k/v in one layer, gate/up in another) compute what the separate layers compute, bit for
bit, in every tier on the CPU, and the engine serves the same tokens with them."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from infleet.runtime.config import EngineConfig
from infleet.runtime.engine.engine import LLMEngine
from infleet.runtime.engine.sampler import SamplingParams
from infleet.runtime.model.llama import Attention, fuse_projections
from infleet.runtime.quant.tiers import apply_tier, model_bytes

from .conftest import random_llama, tiny_llama_config

TIERS = ("bf16", "fp8", "int8", "int4")


def pair(tier: str, dtype: torch.dtype = torch.float32, **overrides: Any) -> tuple[Any, Any]:
    """The same random model twice in `tier`: separate projections, then fused before the tier."""
    model = random_llama(tiny_llama_config(vocab_size=512, **overrides)).to(dtype)
    fused = fuse_projections(copy.deepcopy(model))
    return apply_tier(model, tier), apply_tier(fused, tier)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("tier", TIERS)
def test_fused_layers_give_the_same_bits(tier: str, dtype: torch.dtype) -> None:
    separate, fused = pair(tier, dtype)
    for a, b in zip(separate.model.layers, fused.model.layers, strict=True):
        assert not hasattr(b.self_attn, "q_proj") and not hasattr(b.mlp, "gate_proj")
        for rows in (1, 5, 32):
            x = torch.randn(rows, 64, generator=torch.Generator().manual_seed(rows)).to(dtype)
            qkv = torch.cat([a.self_attn.q_proj(x), a.self_attn.k_proj(x), a.self_attn.v_proj(x)], dim=-1)
            assert torch.equal(b.self_attn.qkv_proj(x), qkv), (tier, rows)
            assert torch.equal(b.mlp(x), a.mlp(x)), (tier, rows)
    assert model_bytes(fused) == model_bytes(separate)  # nothing copied twice, nothing lost


def test_qwen2_biases_are_fused_with_their_weights() -> None:
    separate, fused = pair("int8", attention_bias=True)
    attn = fused.model.layers[0].self_attn
    assert isinstance(attn, Attention) and attn.qkv_proj is not None and attn.qkv_proj.bias is not None
    x = torch.randn(3, 64)
    a = separate.model.layers[0].self_attn
    assert torch.equal(attn.qkv_proj(x), torch.cat([a.q_proj(x), a.k_proj(x), a.v_proj(x)], dim=-1))


def test_fusing_twice_changes_nothing() -> None:
    model = fuse_projections(random_llama(tiny_llama_config(vocab_size=512)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    after = fuse_projections(model).state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("tier", ["bf16", "int4"])
def test_the_engine_serves_the_same_tokens_fused(tier: str, smollm2_tokenizer: Any) -> None:
    separate, fused = pair(tier)
    config = tiny_llama_config(vocab_size=512)
    prompts = [[5, 17, 301, 42], [7] * 20, [100, 200, 300]]
    greedy = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    outs = [
        LLMEngine(m, config, smollm2_tokenizer, EngineConfig(max_model_len=256)).generate(prompts, greedy)
        for m in (separate, fused)
    ]
    assert outs[0] == outs[1] and all(len(o) == 12 for o in outs[0])


@pytest.mark.model
def test_the_served_smollm2_is_fused_and_answers_as_the_separate_layers(smollm2_path: Any) -> None:
    """`from_config` (what `serve` runs) fuses; greedy int4 tokens equal those of the model left unfused."""
    from infleet.runtime.loader import load_model

    cfg = EngineConfig(model=str(smollm2_path), tier="int4", max_model_len=256)
    served = LLMEngine.from_config(cfg)
    assert served.model.model.layers[0].self_attn.qkv_proj is not None
    model, config, tokenizer = load_model(smollm2_path, dtype=torch.float32)
    separate = LLMEngine(apply_tier(model, "int4"), config, tokenizer, cfg)
    prompts = [tokenizer.encode(t) for t in ("The capital of France is", "def fib(n):", "Once upon a time")]
    greedy = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    assert served.generate(prompts, greedy) == separate.generate(prompts, greedy)
