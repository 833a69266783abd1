"""Fixtures for the parallel tests: the model, prompts and a tiny random Llama on disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from .support import PROMPTS


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from infleet.runtime.loader.smollm2 import smollm2_gguf

    return smollm2_gguf()


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_path: Path) -> Any:
    from infleet.runtime.parallel.loading import read_metadata

    return read_metadata(smollm2_path)[1]


@pytest.fixture(scope="session")
def prompt_ids(smollm2_tokenizer: Any) -> list[list[int]]:
    return [smollm2_tokenizer.encode(p) for p in PROMPTS]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer: Any) -> Path:
    """A two-layer Llama with even head counts (8 heads, 2 KV heads) in the Hugging Face layout, random weights
    scaled so that greedy choices are clear-cut; SmolLM2's tokenizer."""
    from safetensors.torch import save_file

    from infleet.runtime.config import ModelConfig
    from infleet.runtime.model.llama import LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama")
    hf = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 49152,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 512,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "eos_token_id": 2,
    }
    (path / "config.json").write_text(json.dumps(hf))
    torch.manual_seed(0)
    model = LlamaForCausalLM(ModelConfig.from_hf_dict(hf))
    weights = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.5 if "embed" in name else 2.0 / p.shape[1] ** 0.5)
            weights[name] = p.detach().clone().contiguous()
    save_file(weights, str(path / "model.safetensors"))
    smollm2_tokenizer.hf.save(str(path / "tokenizer.json"))
    return path
