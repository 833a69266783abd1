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
