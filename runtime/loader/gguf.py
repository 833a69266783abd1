"""Load a Llama-family GGUF file (llama.cpp's format): config and tokenizer from metadata, weights dequantized.

llama.cpp's converter permutes the rows of the q and k projections so that rotary pairs are adjacent
(interleaved RoPE); this model uses Hugging Face's rotate-half layout, so the permutation is undone here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from infleet.runtime.config import ModelConfig
from infleet.runtime.model.llama import LlamaForCausalLM
from infleet.runtime.tokenizer import Tokenizer

SUPPORTED_GGUF_ARCHITECTURES = ("llama",)

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def _field(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def read_config(reader: gguf.GGUFReader, name: str) -> ModelConfig:
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise ValueError(
            f"unsupported architecture {arch!r} in GGUF (supported: {', '.join(SUPPORTED_GGUF_ARCHITECTURES)})"
        )
    heads = int(_field(reader, f"{arch}.attention.head_count"))
    hidden = int(_field(reader, f"{arch}.embedding_length"))
    tensor_names = {t.name for t in reader.tensors}
    vocab = _field(reader, f"{arch}.vocab_size") or len(_field(reader, "tokenizer.ggml.tokens", []))
    rope_scaling = None
    scaling_type = _field(reader, f"{arch}.rope.scaling.type")
    if scaling_type == "linear":
        rope_scaling = {"rope_type": "linear", "factor": float(_field(reader, f"{arch}.rope.scaling.factor"))}
    elif scaling_type not in (None, "none"):
        raise ValueError(f"unsupported rope scaling {scaling_type!r} in GGUF")
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    eot = _field(reader, "tokenizer.ggml.eot_token_id")
    return ModelConfig(
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(_field(reader, f"{arch}.feed_forward_length")),
        num_hidden_layers=int(_field(reader, f"{arch}.block_count")),
        num_attention_heads=heads,
        num_key_value_heads=int(_field(reader, f"{arch}.attention.head_count_kv", heads)),
        head_dim=int(_field(reader, f"{arch}.rope.dimension_count", hidden // heads)),
        rms_norm_eps=float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        rope_scaling=rope_scaling,
        max_position_embeddings=int(_field(reader, f"{arch}.context_length", 2048)),
        tie_word_embeddings="output.weight" not in tensor_names,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_ids=[int(t) for t in (eos, eot) if t is not None],
        architecture=arch,
        name=name,
    )


def read_tokenizer(reader: gguf.GGUFReader, config: ModelConfig) -> Tokenizer:
    tokens = _field(reader, "tokenizer.ggml.tokens")
    if tokens is None:
        raise ValueError("the GGUF file carries no tokenizer (tokenizer.ggml.tokens)")
    tok = Tokenizer.from_gguf_vocab(
        model=_field(reader, "tokenizer.ggml.model", "gpt2"),
        pre=_field(reader, "tokenizer.ggml.pre", "default"),
        tokens=list(tokens),
        merges=list(_field(reader, "tokenizer.ggml.merges", [])),
        token_types=[int(t) for t in _field(reader, "tokenizer.ggml.token_type", [1] * len(tokens))],
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_ids[0] if config.eos_token_ids else None,
        add_bos_token=bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
        chat_template=_field(reader, "tokenizer.chat_template"),
    )
    tok.eos_token_ids = list(dict.fromkeys(config.eos_token_ids))
    return tok


def unpermute_rope_rows(w: np.ndarray, num_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's `permute`: per head, rows (pairs interleaved) -> (first halves, second halves)."""
    rows = w.shape[0]
    return w.reshape(num_heads, rows // num_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def iter_weights(reader: gguf.GGUFReader, config: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """Hugging Face-named float32 tensors."""
    for t in reader.tensors:
        stem, _, suffix = t.name.rpartition(".")
        parts = stem.split(".")
        if parts[0] == "blk":
            layer, kind = int(parts[1]), parts[2]
            if kind not in _LAYER_NAMES:
                raise ValueError(f"unexpected tensor {t.name!r} in a Llama GGUF")
            name = f"model.layers.{layer}.{_LAYER_NAMES[kind]}.{suffix}"
        elif stem in _GLOBAL_NAMES:
            kind = stem
            name = f"{_GLOBAL_NAMES[stem]}.{suffix}"
        elif stem == "rope_freqs":
            raise ValueError("GGUF rope frequency factors (Llama 3.1 rope scaling) are not supported yet")
        else:
            raise ValueError(f"unexpected tensor {t.name!r} in a Llama GGUF")
        shape = tuple(reversed([int(d) for d in t.shape]))
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        if kind == "attn_q":
            w = unpermute_rope_rows(w, config.num_attention_heads)
        elif kind == "attn_k":
            w = unpermute_rope_rows(w, config.num_key_value_heads)
        yield name, torch.from_numpy(np.require(w, requirements=["C", "W"]))


def load_gguf(path: Path, dtype: torch.dtype = torch.float32) -> tuple[LlamaForCausalLM, ModelConfig, Tokenizer]:
    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:  # a truncated or foreign file: the reader raises assorted errors
        raise ValueError(f"{path} is not a readable GGUF file ({exc.__class__.__name__}: {exc})") from exc
    config = read_config(reader, name=path.stem)
    tokenizer = read_tokenizer(reader, config)
    model = LlamaForCausalLM.empty(config, dtype)
    model.load_weights(iter_weights(reader, config))
    return model.eval(), config, tokenizer
