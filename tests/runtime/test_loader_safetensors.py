"""The Hugging Face layout loader, checked against transformers on a small random Llama with Llama-3 rope scaling."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from infleet.runtime.loader import ModelLoadError, load_model
from infleet.runtime.model.attention import AttentionMetadata, KVCache


@pytest.fixture(scope="module")
def hf_dir(
    tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer: Any, save_hf_layout: Callable[[Any, Path], None]
) -> tuple[Path, Any]:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=smollm2_tokenizer.vocab_size,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 256,
        },
        tie_word_embeddings=False,
        eos_token_id=2,
        bos_token_id=1,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("tiny-llama3")
    save_hf_layout(model, path)
    return path, model


def test_loads_and_matches_transformers_logits(hf_dir: tuple[Path, Any]) -> None:
    path, hf_model = hf_dir
    model, config, tokenizer = load_model(path)
    assert config.rope_scaling and config.rope_scaling["rope_type"] == "llama3"
    assert not config.tie_word_embeddings and config.num_key_value_heads == 2
    positions = list(range(300, 340))  # beyond the original context, where the scaling matters
    ids = [(i * 37) % config.vocab_size for i in range(len(positions))]
    nb = (positions[-1] + 1 + 15) // 16
    caches = [KVCache.allocate(nb, 16, 2, config.head_dim, torch.float32) for _ in range(model.num_layers)]
    # a prefill of 300 tokens, then the 40 tokens we compare, attended through the paged cache
    prefix = [(i * 11) % config.vocab_size for i in range(300)]
    with torch.inference_mode():
        model(
            torch.tensor(prefix),
            torch.arange(300),
            caches,
            AttentionMetadata.build([300], [300], [list(range(nb))], 16),
        )
        meta = AttentionMetadata.build([40], [340], [list(range(nb))], 16)
        ours = model.compute_logits(model(torch.tensor(ids), torch.tensor(positions), caches, meta))
        theirs = hf_model(torch.tensor([prefix + ids])).logits[0, 300:]
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=0), (ours - theirs).abs().max()
    assert tokenizer.eos_token_ids == [2]
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}]).endswith("<|im_start|>assistant\n")


def test_missing_weights_are_reported(hf_dir: tuple[Path, Any], tmp_path: Path) -> None:
    path, _ = hf_dir
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((path / name).read_bytes())
    with pytest.raises(ModelLoadError, match=r"has no \*\.safetensors files"):
        load_model(tmp_path)
