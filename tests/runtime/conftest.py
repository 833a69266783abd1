"""Shared fixtures for runtime tests: the real SmolLM2 model (ours and Hugging Face's), loaded once per session."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from infleet.runtime.loader.smollm2 import smollm2_gguf

    return smollm2_gguf()


@pytest.fixture(scope="session")
def smollm2(smollm2_path: Path) -> tuple[Any, Any, Any]:
    """(model, config, tokenizer) from infleet's loader, fp32."""
    from infleet.runtime.loader import load_model

    return load_model(smollm2_path, dtype=torch.float32)


@pytest.fixture(scope="session")
def hf_smollm2(smollm2_path: Path) -> Any:
    """transformers' own GGUF loader: the independent reference (about 35 s to dequantize)."""
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(smollm2_path.parent), gguf_file=smollm2_path.name, torch_dtype=torch.float32
    )
    return model.eval()


@pytest.fixture(scope="session")
def hf_smollm2_tokenizer(smollm2_path: Path) -> Any:
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(smollm2_path.parent), gguf_file=smollm2_path.name)


# --- a real `python -m infleet.runtime serve` process, shared by the server, KServe and metrics tests -------------
SERVED_NAME = "smollm2"


@pytest.fixture(scope="session")
def runtime_server(smollm2_path: Path) -> Any:
    """The runtime serving SmolLM2 on a free port, started once per session; yields its ServerProcess."""
    from infleet.runtime.server.launch import ServerProcess

    server = ServerProcess(smollm2_path, "--served-name", SERVED_NAME, "--max-model-len", "1024")
    with server:
        yield server


# The test machine is shared by many processes: with more intra-op threads than free cores, OpenMP's spin-waits
# make every matmul many times slower. One thread keeps the model tests fast and steady.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_path: Path) -> Any:
    """Only the tokenizer (reads GGUF metadata, no weights)."""
    import gguf

    from infleet.runtime.loader.gguf import read_config, read_tokenizer

    reader = gguf.GGUFReader(smollm2_path)
    return read_tokenizer(reader, read_config(reader, "smollm2"))


@pytest.fixture(scope="session")
def save_hf_layout(smollm2_tokenizer: Any) -> Callable[[Any, Path], None]:
    """Saves a transformers model as a Hugging Face model directory, with SmolLM2's tokenizer and chat template."""

    def save(model: Any, path: Path) -> None:
        model.save_pretrained(path, safe_serialization=True)
        smollm2_tokenizer.hf.save(str(path / "tokenizer.json"))
        config = {"chat_template": smollm2_tokenizer.chat_template, "eos_token": "<|im_end|>", "bos_token": None}
        (path / "tokenizer_config.json").write_text(json.dumps(config))

    return save


def tiny_llama_config(**overrides: Any) -> Any:
    """A two-layer Llama with SmolLM2's vocabulary, so the real tokenizer applies."""
    from infleet.runtime.config import ModelConfig

    fields: dict[str, Any] = dict(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rope_theta=10000.0,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_ids=[2],
        name="tiny-llama",
    )
    fields.update(overrides)
    return ModelConfig(**fields)


def random_llama(config: Any) -> Any:
    """Random weights (seed 0) scaled up so that greedy choices are clear-cut."""
    from infleet.runtime.model.llama import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.5 if "embed" in name else 1.0 / p.shape[1] ** 0.5 * 2)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_llama(smollm2_tokenizer: Any) -> tuple[Any, Any, Any]:
    """(model, config, tokenizer) of `random_llama`."""
    config = tiny_llama_config()
    return random_llama(config), config, smollm2_tokenizer


@pytest.fixture(scope="session")
def tiny_llama_512(smollm2_tokenizer: Any) -> tuple[Any, Any, Any]:
    """`tiny_llama` with a 512-token vocabulary (ids valid for SmolLM2's tokenizer): sampling, which sorts the
    vocabulary per row, stays cheap."""
    config = tiny_llama_config(vocab_size=512)
    return random_llama(config), config, smollm2_tokenizer
