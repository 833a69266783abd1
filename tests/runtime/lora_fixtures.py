"""A tiny random Llama saved as a Hugging Face model and two PEFT adapters of different ranks for it, made with
`peft` itself; shared by the LoRA engine and server tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

BASE_SEED, ADAPTER_SEEDS = 0, (1, 2)
# adapter 1: rank 4 on attention only; adapter 2: rank 8 on every projection, rsLoRA scaling
ADAPTERS: dict[str, dict[str, Any]] = {
    "sql": dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
    "poet": dict(
        r=8,
        lora_alpha=16,
        use_rslora=True,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    ),
}


@dataclass
class LoRAModels:
    base: Path
    adapters: dict[str, Path]


def hf_base(vocab_size: int) -> Any:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, eos_token_id=2, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(BASE_SEED)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # scaled up so greedy choices are clear-cut
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 2.0 / p.shape[1] ** 0.5)
    return model


def save_adapter(base: Any, name: str, path: Path, seed: int) -> None:
    """A PEFT adapter whose B is random too (PEFT initialises it to zero), large enough to change greedy tokens."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(seed)
    model = peft.get_peft_model(base, peft.LoraConfig(**ADAPTERS[name]))
    with torch.no_grad():
        for key, p in model.named_parameters():
            if "lora_A" in key or "lora_B" in key:
                p.normal_(0.0, 1.5 / p.shape[1] ** 0.5)
    model.save_pretrained(path, safe_serialization=True)
    model.unload()  # the base model back, unwrapped


def make(root: Path, save_hf_layout: Any, vocab_size: int) -> LoRAModels:
    base = hf_base(vocab_size)
    save_hf_layout(base, root / "base")
    adapters = {}
    for name, seed in zip(ADAPTERS, ADAPTER_SEEDS, strict=True):
        save_adapter(base, name, root / name, seed)
        adapters[name] = root / name
    return LoRAModels(root / "base", adapters)


def merged_reference(
    models: LoRAModels, name: str | None, prompts: list[list[int]], new_tokens: int
) -> list[list[int]]:
    """Greedy tokens of Hugging Face's model with the adapter merged into its weights (peft's merge_and_unload)."""
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    model = transformers.LlamaForCausalLM.from_pretrained(models.base, torch_dtype=torch.float32).eval()
    if name is not None:
        model = peft.PeftModel.from_pretrained(model, models.adapters[name]).merge_and_unload().eval()
    out = []
    for prompt in prompts:
        with torch.no_grad():
            ids = model.generate(
                torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False, min_new_tokens=new_tokens,
                pad_token_id=0,
            )  # fmt: skip
        out.append([int(t) for t in ids[0, len(prompt) :]])
    return out
