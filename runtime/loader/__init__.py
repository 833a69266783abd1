"""Model loaders: GGUF and the HF safetensors layout, behind one `load_model` that detects the format."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from infleet.runtime.config import ModelConfig
    from infleet.runtime.model.llama import LlamaForCausalLM
    from infleet.runtime.tokenizer import Tokenizer


class ModelLoadError(Exception):
    """A model that cannot be served; the message is one line meant for the operator's eyes."""


def load_model(
    path: str | Path, *, dtype: torch.dtype = torch.float32
) -> tuple[LlamaForCausalLM, ModelConfig, Tokenizer]:
    """A `.gguf` file or a directory in the Hugging Face layout (or holding exactly one `.gguf`)."""
    from infleet.runtime.loader.gguf import load_gguf
    from infleet.runtime.loader.safetensors import load_safetensors

    p = Path(path).expanduser()
    try:
        if p.is_file() and p.suffix == ".gguf":
            return load_gguf(p, dtype)
        if p.is_dir():
            if (p / "config.json").exists():
                return load_safetensors(p, dtype)
            ggufs = sorted(p.glob("*.gguf"))
            if len(ggufs) == 1:
                return load_gguf(ggufs[0], dtype)
            if ggufs:
                raise ValueError(f"{p} holds {len(ggufs)} .gguf files; pass the one to serve")
            raise ValueError(f"{p} holds neither config.json (Hugging Face layout) nor a .gguf file")
        if p.exists():
            raise ValueError(f"{p} is neither a .gguf file nor a model directory")
        raise FileNotFoundError(f"model path {p} does not exist")
    except (ValueError, FileNotFoundError, KeyError, OSError) as exc:
        raise ModelLoadError(f"cannot load model from {p}: {exc}".replace("\n", " ")) from exc
