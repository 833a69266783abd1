"""Shared fixtures for runtime tests: the real SmolLM2 model (ours and Hugging Face's), loaded once per session."""

from __future__ import annotations

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
