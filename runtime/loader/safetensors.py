"""Load the Hugging Face layout: config.json, *.safetensors shards, tokenizer.json and tokenizer_config.json."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from infleet.runtime.config import ModelConfig
from infleet.runtime.model.llama import LlamaForCausalLM
from infleet.runtime.tokenizer import Tokenizer


def read_config(path: Path) -> ModelConfig:
    config_file = path / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{path} has no config.json")
    config = ModelConfig.from_hf_dict(json.loads(config_file.read_text()), name=path.name)
    gen_file = path / "generation_config.json"
    if gen_file.exists():  # chat models often list extra end-of-turn ids here
        eos = json.loads(gen_file.read_text()).get("eos_token_id")
        extra = [eos] if isinstance(eos, int) else list(eos or [])
        config.eos_token_ids = list(dict.fromkeys([*config.eos_token_ids, *map(int, extra)]))
    return config


def iter_weights(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{path} has no *.safetensors files")
    for shard in shards:
        with safe_open(str(shard), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                yield name, f.get_tensor(name)


def load_safetensors(path: Path, dtype: torch.dtype = torch.float32) -> tuple[LlamaForCausalLM, ModelConfig, Tokenizer]:
    config = read_config(path)
    tokenizer = Tokenizer.from_hf_dir(path, eos_token_ids=config.eos_token_ids)
    model = LlamaForCausalLM.empty(config, dtype)
    model.load_weights(iter_weights(path))
    return model.eval(), config, tokenizer
