"""Rotary embedding: the step's tables, looked up once and shared by every layer, rotate exactly as the rotate-half
formula does, in float32 and in bfloat16, for any positions (Llama-3 scaling included)."""

from __future__ import annotations

import pytest
import torch

from infleet.runtime.config import ModelConfig
from infleet.runtime.model.llama import RotaryEmbedding


def _config(rope_scaling: dict[str, object] | None = None) -> ModelConfig:
    return ModelConfig(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, rope_theta=10000.0, max_position_embeddings=512, rope_scaling=rope_scaling,
    )  # fmt: skip


def _rotate_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Hugging Face's rotation, with cos/sin [T, D/2] cast to x's dtype."""
    x1, x2 = x.chunk(2, dim=-1)
    c, s = cos.unsqueeze(1).to(x.dtype), sin.unsqueeze(1).to(x.dtype)
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "scaling",
    [None, {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 64}],
)
def test_tables_rotate_bit_for_bit_as_rotate_half(dtype: torch.dtype, scaling: dict[str, object] | None) -> None:
    config = _config(scaling)
    rope = RotaryEmbedding(config)
    g = torch.Generator().manual_seed(0)
    positions = torch.randint(0, config.max_position_embeddings, (37,), generator=g)
    tables = rope(positions, dtype)
    assert tables.cos.dtype == tables.sin.dtype == dtype
    assert tables.cos.shape == tables.sin.shape == (37, 1, config.head_dim)
    for heads in (config.num_attention_heads, config.num_key_value_heads):
        x = torch.randn(37, heads, config.head_dim, generator=g).to(dtype)
        expected = _rotate_half(x, rope.cos[positions], rope.sin[positions])
        assert torch.equal(tables.rotate(x), expected)


def test_position_zero_is_the_identity() -> None:
    config = _config()
    x = torch.randn(3, 2, config.head_dim)
    assert torch.equal(RotaryEmbedding(config)(torch.zeros(3, dtype=torch.long), torch.float32).rotate(x), x)
