"""A tiny random-weight Llama on disk (Hugging Face layout) for serving tests that run the Triton interpreter.

Small on purpose: 2 layers, hidden 64, GQA (4 query heads on 2 KV heads), a 256-word vocabulary whose words
(`w0` ... `w255`) decode one to one, so a completion's text is its greedy token sequence.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

VOCAB = 256
CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 128,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "eos_token_id": 0,
}


def write_tiny_llama(path: Path, seed: int = 0) -> Path:
    """Weights scaled so that greedy choices are clear-cut (bf16 and int4 rounding do not flip them)."""
    from safetensors.torch import save_file

    from infleet.runtime.config import ModelConfig
    from infleet.runtime.model.llama import LlamaForCausalLM

    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(CONFIG))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(ModelConfig.from_hf_dict(CONFIG))
    weights = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 1.0 if "embed" in name else 2.0 / p.shape[1] ** 0.5)
            weights[name] = p.detach().clone().contiguous()
    save_file(weights, str(path / "model.safetensors"))
    vocab = {f"w{i}": i for i in range(VOCAB)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="w1"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(path / "tokenizer.json"))
    return path


@torch.no_grad()
def greedy_margin(model: torch.nn.Module, prompt: list[int], n: int) -> tuple[list[int], float]:
    """(the n greedy tokens after `prompt`, the smallest gap between the top two logits on the way)."""
    from infleet.runtime.model.attention import KVCache, StepInputs

    c = model.config  # type: ignore[attr-defined]
    dtype = next(model.parameters()).dtype
    tokens, gap = list(prompt), float("inf")
    for _ in range(n):
        t, nb = len(tokens), -(-len(tokens) // 16)
        caches = [
            KVCache.allocate(nb, 16, c.num_key_value_heads, c.head_dim, dtype) for _ in range(c.num_hidden_layers)
        ]
        step = StepInputs.build(tokens, [t], [t], [list(range(nb))], 16, [t - 1])
        hidden = model(step.input_ids, step.positions, caches, step.meta)
        top = model.compute_logits(hidden[step.sample_rows])[0].topk(2)  # type: ignore[operator]
        gap = min(gap, float(top.values[0] - top.values[1]))
        tokens.append(int(top.indices[0]))
    return tokens[len(prompt) :], gap


def clear_cut_prompts(path: Path, tier: str, count: int, n: int, min_gap: float, seed: int = 0) -> list[list[int]]:
    """The first `count` of a fixed sequence of random prompts whose greedy continuation, computed in this process
    with PyTorch's kernels at the tier's dtypes, never has its top two logits within `min_gap` of each other.

    Two correct kernels round differently in bf16, and a near-tie then flips a greedy token; prompts without
    near-ties make "same greedy tokens" a test of the kernels rather than of rounding order. The choice depends
    only on the reference path, never on the kernels under test.
    """
    import random

    from infleet.runtime.config import EngineConfig
    from infleet.runtime.kernels import dispatch
    from infleet.runtime.loader import load_model
    from infleet.runtime.quant.tiers import apply_tier

    dispatch.set_backend("torch")
    dtype = getattr(torch, EngineConfig(tier=tier, device="cpu").compute_dtype_name)
    model = apply_tier(load_model(path, dtype=dtype)[0], tier).eval()
    rng = random.Random(seed)
    chosen: list[list[int]] = []
    for _ in range(200):
        prompt = [rng.randrange(1, VOCAB) for _ in range(rng.randrange(17, 30))]
        if greedy_margin(model, prompt, n)[1] >= min_gap:
            chosen.append(prompt)
            if len(chosen) == count:
                return chosen
    raise AssertionError(f"fewer than {count} of 200 prompts have greedy margins of {min_gap} for tier {tier}")


def serve_greedy(
    model: Path, prompts: list[list[int]], max_tokens: int, *args: str
) -> tuple[list[str], dict[str, Any]]:
    """Each prompt's greedy completion and the `/v1/models` card from a fresh server (`--served-name m` + args);
    the requests are sent together, so their decodes share steps."""
    from infleet.runtime.server.launch import ServerProcess

    def one(server: ServerProcess, prompt: list[int]) -> str:
        body = {"model": "m", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
        r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=300)
        assert r.status_code == 200, r.text
        text: str = r.json()["choices"][0]["text"]
        return text

    with ServerProcess(model, "--served-name", "m", *args) as server, ThreadPoolExecutor(len(prompts)) as pool:
        texts = list(pool.map(lambda p: one(server, p), prompts))
        card: dict[str, Any] = httpx.get(f"{server.url}/v1/models", timeout=30).json()["data"][0]
    return texts, card
