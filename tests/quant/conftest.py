"""The real SmolLM2 in float32, loaded once for the tier tests that need it (each test quantizes a deep copy)."""

from __future__ import annotations

from typing import Any

import pytest
import torch


@pytest.fixture(scope="session")
def smollm2_float() -> tuple[Any, Any, Any]:
    from infleet.runtime.loader import load_model
    from infleet.runtime.loader.smollm2 import smollm2_gguf

    torch.set_num_threads(1)  # a shared machine: extra OpenMP threads spin instead of helping
    model, config, tokenizer = load_model(smollm2_gguf(), dtype=torch.float32)
    return model.eval(), config, tokenizer
