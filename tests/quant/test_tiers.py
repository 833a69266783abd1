"""quantize_model swaps every Linear in place, keeps outputs close to the float model, and refuses what cannot apply."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from infleet.runtime.config import ModelConfig
from infleet.runtime.model.llama import LlamaForCausalLM
from infleet.runtime.quant import formats as F
from infleet.runtime.quant import tiers as T


def tiny_llama(hidden: int = 64, ffn: int = 128, vocab: int = 256, tied: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        tie_word_embeddings=tied,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config)
    for p in model.parameters():
        nn.init.normal_(p, std=0.05)
    return model


@pytest.mark.parametrize("tier", ["int8", "int4"])
def test_a_tied_lm_head_becomes_one_int8_table_for_head_and_embedding(tier: str) -> None:
    model = tiny_llama(tied=True)
    ids = torch.tensor([3, 17, 255, 3])
    x = torch.randn(5, 64)
    float_embed, float_logits = model.model.embed_tokens(ids).detach(), model.compute_logits(x).detach()
    info = T.quantize_model(model, tier)
    assert info.layers == 2 * 7 + 1  # the tied head once
    head, embed = model.lm_head, model.model.embed_tokens
    assert isinstance(head, T.Int8Head) and isinstance(embed, T.Int8Embedding)
    assert embed.weight is head.weight and embed.weight.dtype == torch.int8  # one table, no float copy left
    assert not any(p.numel() == 256 * 64 for p in model.parameters())
    dequantized = F.dequantize_int8(F.Int8Weight(head.codes(), head.scale))
    rows = embed(ids)
    assert rows.dtype == torch.float32
    torch.testing.assert_close(rows, dequantized[ids])
    torch.testing.assert_close(rows, float_embed, atol=0.002, rtol=0.02)
    logits = model.compute_logits(x)
    assert logits.dtype == torch.float32  # fp32 logits, not bf16's 8 bits
    assert (logits - float_logits).norm() / float_logits.norm() < 0.02
    if head.woq:  # infleet's CPU kernel: activations rounded to bf16, products summed in float32
        torch.testing.assert_close(logits, x.bfloat16().float() @ dequantized.T, atol=1e-5, rtol=1e-5)
    else:
        torch.testing.assert_close(logits, x @ dequantized.T, atol=1e-5, rtol=1e-5)


def test_fp8_keeps_a_tied_lm_head_float() -> None:
    model = tiny_llama(tied=True)
    info = T.quantize_model(model, "fp8")
    assert info.layers == 2 * 7
    assert isinstance(model.lm_head, nn.Linear)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert isinstance(model.model.layers[0].mlp.down_proj, T.Fp8Linear)


@pytest.mark.parametrize(
    ("tier", "layer_type", "max_rel"),
    [("fp8", T.Fp8Linear, 0.08), ("int8", T.Int8Linear, 0.02), ("int4", T.Int4Linear, 0.15)],
)
def test_quantize_model_swaps_all_linears(tier: str, layer_type: type, max_rel: float) -> None:
    model = tiny_llama()
    x = torch.randn(5, 64)
    ref = model.lm_head(x)
    info = T.quantize_model(model, tier)
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    assert info.layers == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer, plus lm_head
    assert isinstance(model.lm_head, layer_type)
    assert model.model.embed_tokens.weight.dtype == torch.float32
    assert info.weight_bytes < info.float_weight_bytes
    out = model.lm_head(x)
    assert out.dtype == x.dtype and out.shape == ref.shape
    assert (out - ref).norm() / ref.norm() < max_rel
    assert info.group_size == (64 if tier == "int4" else None)


def test_layers_match_dequantized_weights() -> None:
    """Each layer computes x @ dequantize(quantize(W)).T (up to the bf16 rounding of the CPU kernels)."""
    linear = nn.Linear(128, 48, bias=False)
    x = torch.randn(3, 7, 128)
    w = linear.weight.detach()
    cases = [
        (T.Fp8Linear.from_linear(linear), F.dequantize_fp8(F.quantize_fp8(w))),
        (T.Int8Linear.from_linear(linear), F.dequantize_int8(F.quantize_int8(w))),
        (T.Int4Linear.from_linear(linear, 64), F.dequantize_int4(F.quantize_int4(w, 64))),
    ]
    for layer, deq in cases:
        expected = x @ deq.T
        out = layer(x)
        assert out.shape == (3, 7, 48)
        torch.testing.assert_close(out, expected, atol=0.02, rtol=0.02)


def test_int4_portable_layout_matches() -> None:
    linear = nn.Linear(96, 40, bias=False)
    layer = T.Int4Linear.from_linear(linear, 32)
    assert not layer.cpu_layout  # PyTorch's CPU int4 kernel needs out_features % 16 == 0
    x = torch.randn(4, 96)
    expected = x @ F.dequantize_int4(F.quantize_int4(linear.weight.detach(), 32)).T
    torch.testing.assert_close(layer(x), expected, atol=1e-4, rtol=1e-4)


def test_memory_shrinks_by_tier() -> None:
    sizes = {}
    for tier in T.TIERS:
        model = tiny_llama(hidden=128, ffn=256, vocab=64)
        sizes[tier] = T.quantize_model(model, tier).weight_bytes
    assert sizes["bf16"] > sizes["fp8"] > sizes["int4"]
    assert sizes["fp8"] == pytest.approx(sizes["int8"], rel=0.01)


def test_refuses_unknown_tier_and_undividable_shapes() -> None:
    with pytest.raises(T.TierError, match="unknown tier 'int3'"):
        T.quantize_model(tiny_llama(), "int3")
    model = tiny_llama(hidden=80, ffn=100)  # 80 = 16 * 5, 100: no group size of 32+ divides them
    with pytest.raises(T.TierError, match=r"int4 cannot apply.*\[80, 100\]"):
        T.quantize_model(model, "int4")
    assert isinstance(model.lm_head, nn.Linear)  # nothing was changed before refusing
    T.quantize_model(model, "int8")  # int8 has no such constraint


def test_int4_follows_a_4bit_source_grid() -> None:
    """Weights already on a 4-bit grid in blocks of 32 (a dequantized GGUF Q4_1) get groups of 32, losslessly."""
    model = tiny_llama()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                w = module.weight
                codes = torch.randint(0, 16, (w.shape[0], w.shape[1] // 32, 32)).float()
                codes[..., 0], codes[..., 1] = 0, 15  # Q4_1 maps each block's min and max to codes 0 and 15
                d, m = (
                    torch.rand(w.shape[0], w.shape[1] // 32, 1) * 0.01,
                    -torch.rand(w.shape[0], w.shape[1] // 32, 1) * 0.05,
                )
                w.copy_((codes * d + m).reshape(w.shape))
    assert T.source_grid_block(model) == 32
    assert T.source_grid_block(tiny_llama()) is None
    before = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    info = T.quantize_model(model, "int4")
    assert info.group_size == 32 and "4-bit grid" in (info.group_size_reason or "")
    torch.testing.assert_close(F.dequantize_int4(F.quantize_int4(before, 32)), before, atol=1e-6, rtol=0)
    x = torch.randn(3, 64)
    err = (model.model.layers[0].mlp.up_proj(x) - x @ before.T).abs()
    assert (err <= (x.abs() @ before.abs().T) * 2**-6).all()  # only the bf16 rounding of PyTorch's CPU kernel


def test_apply_tier_keeps_info_on_model() -> None:
    model = T.apply_tier(tiny_llama(), "int4")
    assert model.tier_info.tier == "int4" and model.tier_info.group_size == 64
