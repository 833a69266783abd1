"""Qwen2 (biases on q/k/v, tied embeddings, its chat template) and Mistral in the Hugging Face layout, each a tiny
random model saved by `transformers` and checked against its logits; quantized tiers keep the biases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from infleet.runtime.loader import load_model
from infleet.runtime.model.attention import AttentionMetadata, KVCache
from infleet.runtime.parallel.tensor import TensorShard
from infleet.runtime.quant.tiers import apply_tier

QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def save(kind: str, path: Path, tokenizer: Any) -> Any:
    transformers = pytest.importorskip("transformers")
    common: dict[str, Any] = dict(
        vocab_size=tokenizer.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, eos_token_id=2,
    )  # fmt: skip
    if kind == "qwen2":
        config = transformers.Qwen2Config(**common, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True)
        cls = transformers.Qwen2ForCausalLM
    else:
        config = transformers.MistralConfig(**common, sliding_window=None, tie_word_embeddings=False)
        cls = transformers.MistralForCausalLM
    torch.manual_seed(1)
    model = cls(config).eval()
    if kind == "qwen2":  # random init leaves biases at zero: make them count
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.hf.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": QWEN_TEMPLATE, "eos_token": "<|im_end|>"}))
    return model


def logits(model: Any, config: Any, ids: list[int]) -> torch.Tensor:
    nb = (len(ids) + 15) // 16
    caches = [KVCache.allocate(nb, 16, config.num_key_value_heads, config.head_dim, torch.float32)
              for _ in range(model.num_layers)]  # fmt: skip
    meta = AttentionMetadata.build([len(ids)], [len(ids)], [list(range(nb))], 16)
    with torch.inference_mode():
        out: torch.Tensor = model.compute_logits(model(torch.tensor(ids), torch.arange(len(ids)), caches, meta))
    return out


@pytest.mark.parametrize("kind", ["qwen2", "mistral"])
def test_matches_transformers_logits(kind: str, tmp_path: Path, smollm2_tokenizer: Any) -> None:
    hf_model = save(kind, tmp_path, smollm2_tokenizer)
    model, config, tokenizer = load_model(tmp_path)
    assert config.attention_bias is (kind == "qwen2") and config.tie_word_embeddings is (kind == "qwen2")
    ids = [(i * 37) % config.vocab_size for i in range(40)]
    ours = logits(model, config, ids)
    with torch.inference_mode():
        theirs = hf_model(torch.tensor([ids])).logits[0]
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=0), (ours - theirs).abs().max()
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}]).endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("tier", ["fp8", "int8", "int4"])
def test_quantized_tiers_keep_the_biases(tier: str, tmp_path: Path, smollm2_tokenizer: Any) -> None:
    save("qwen2", tmp_path, smollm2_tokenizer)
    model, config, _ = load_model(tmp_path)
    proj = model.model.layers[0].self_attn.q_proj
    x = torch.randn(5, config.hidden_size)
    with torch.no_grad():
        reference, bias = proj(x), proj.bias.clone()
    apply_tier(model, tier)
    quantized = model.model.layers[0].self_attn.q_proj
    assert quantized is not proj and quantized.bias is not None
    with torch.no_grad():
        error = (quantized(x) - reference).abs().mean()
    assert error < bias.abs().mean() / 4, (error, bias.abs().mean())  # the bias is there, not lost in rounding


def test_tensor_parallel_splits_a_bias_like_its_weight(tmp_path: Path, smollm2_tokenizer: Any) -> None:
    save("qwen2", tmp_path, smollm2_tokenizer)
    _, config, _ = load_model(tmp_path)
    shard = TensorShard(rank=1, size=2, config=config)
    for proj in ("q_proj", "k_proj", "v_proj"):
        name = f"model.layers.0.self_attn.{proj}"
        assert shard.rows(f"{name}.bias") == shard.rows(f"{name}.weight")
