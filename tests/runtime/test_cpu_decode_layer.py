"""A bf16 decoder layer in one C call (`kernels/cpu_decode_layer.py`) against the Python layer on the same kernels:
a decode step's hidden states and the cache it writes, bit for bit, for a batch of sequences of different lengths;
steps and layers the C layer must not take (a prompt in the batch, a hooked layer, a float32 model) take the Python
layer."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from infleet.runtime.config import ModelConfig
from infleet.runtime.kernels import cpu_decode_layer, cpu_woq
from infleet.runtime.model.attention import KVCache, StepInputs
from infleet.runtime.model.llama import LlamaForCausalLM, fuse_projections
from infleet.runtime.quant.tiers import apply_tier

pytestmark = pytest.mark.skipif(not cpu_woq.available(), reason="no AVX512-BF16 on this CPU, or no C compiler")

BLOCK = 16


def _model(dtype: torch.dtype) -> LlamaForCausalLM:
    config = ModelConfig.from_hf_dict(
        {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 96, "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 16, "max_position_embeddings": 256, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
        }
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3) if p.dim() == 2 else p.uniform_(0.5, 1.5)
    return apply_tier(fuse_projections(model.to(dtype)), "bf16").eval()


def _prefilled(model: LlamaForCausalLM, lens: list[int]) -> tuple[list[KVCache], list[list[int]]]:
    """Caches holding the prompts of `lens` tokens, each sequence in its own blocks."""
    c = model.config
    tables, first = [], 0
    for n in lens:
        blocks = -(-(n + 1) // BLOCK)
        tables.append(list(range(first, first + blocks)))
        first += blocks
    dtype = next(model.parameters()).dtype
    caches = [KVCache.allocate(first, BLOCK, c.num_key_value_heads, c.head_dim, dtype) for _ in model.model.layers]
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, c.vocab_size, (sum(lens),), generator=g).tolist()
    step = StepInputs.build(ids, lens, lens, tables, BLOCK, [])
    with torch.inference_mode():
        model(step.input_ids, step.positions, caches, step.meta)
    return caches, tables


def _decode(model: LlamaForCausalLM, caches: list[KVCache], tables: list[list[int]], lens: list[int]) -> Any:
    ids = [7 + i for i in range(len(lens))]
    step = StepInputs.build(ids, [1] * len(lens), [n + 1 for n in lens], tables, BLOCK, list(range(len(lens))))
    with torch.inference_mode():
        return model(step.input_ids, step.positions, caches, step.meta)


def _copy(caches: list[KVCache]) -> list[KVCache]:
    return [KVCache(c.k.clone(), c.v.clone()) for c in caches]


def test_a_decode_step_in_c_gives_the_python_layers_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model(torch.bfloat16)
    lens = [5, 17, 40]  # within one block, across blocks
    caches, tables = _prefilled(model, lens)
    layer = model.model.layers[0]
    assert cpu_decode_layer.runs(layer, caches[0])
    c_caches, py_caches = _copy(caches), _copy(caches)
    calls: list[int] = []
    forward = cpu_decode_layer.forward
    monkeypatch.setattr(cpu_decode_layer, "forward", lambda *a: calls.append(1) or forward(*a))
    in_c = _decode(model, c_caches, tables, lens)
    assert len(calls) == 2  # both layers ran in C
    monkeypatch.setattr(cpu_decode_layer, "_enabled", lambda: False)
    in_python = _decode(model, py_caches, tables, lens)
    assert len(calls) == 2
    assert in_c.dtype == torch.bfloat16 and torch.equal(in_c, in_python)
    for a, b in zip(c_caches, py_caches, strict=True):
        assert torch.equal(a.k, b.k) and torch.equal(a.v, b.v)


def test_steps_and_models_it_does_not_fit_take_the_python_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any) -> Any:
        raise AssertionError("the C layer ran")

    monkeypatch.setattr(cpu_decode_layer, "forward", refuse)
    model = _model(torch.bfloat16)
    _prefilled(model, [20, 3])  # a prefill step: prompts are not decodes
    hooked = _model(torch.bfloat16)  # tensor parallelism all-reduces in forward hooks, which C would skip
    hooked.model.layers[1].mlp.register_forward_hook(lambda module, args, out: out)
    caches, _ = _prefilled(hooked, [4])
    assert cpu_decode_layer.runs(hooked.model.layers[0], caches[0])
    assert not cpu_decode_layer.runs(hooked.model.layers[1], caches[1])
    fp32 = _model(torch.float32)  # float32 activations: the reference path
    caches, tables = _prefilled(fp32, [4])
    assert not cpu_decode_layer.runs(fp32.model.layers[0], caches[0])
    _decode(fp32, caches, tables, [4])
