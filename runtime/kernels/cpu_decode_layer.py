"""A bf16 decoder layer over a step of decode rows in one C call (`cpu_decode_layer.c`).

With its GEMMs on infleet's CPU kernel, a batch-1 bf16 step reads its weights at memory speed, and about half of
the step is the interpreter between the ~20 ops of each of its 30 layers. This module hands a whole layer to C,
which calls the same kernels as the Python layer in the same order (norms, GEMMs, RoPE, the cache write, decode
attention), so a row comes out bit for bit alike either way (`tests/runtime/test_cpu_decode_layer.py`).

It runs when every piece of the layer is on the CPU kernels: bf16 activations and cache, `Bf16Linear` projections
(fused q/k/v and gate/up, no bias, no LoRA wrapper), no forward hooks (tensor parallelism all-reduces in hooks), and
the step is decodes only.
Anything else takes the Python layer. INFLEET_CPU_DECODE_LAYER=python keeps the Python layer always.
"""

from __future__ import annotations

import ctypes
import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from infleet.runtime.kernels import cpu_attention, cpu_native, cpu_pointwise
from infleet.runtime.kernels.casts import as_dtype

if TYPE_CHECKING:  # the model imports this module
    from infleet.runtime.model.attention import AttentionMetadata, KVCache
    from infleet.runtime.model.llama import DecoderLayer

_ptr, _i64, _f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float


class Weights(ctypes.Structure):
    _fields_ = [(name, _ptr) for name in ("input_norm", "post_norm", "qkv", "o", "gate_up", "down")]


class Cache(ctypes.Structure):
    _fields_ = [
        *((name, _ptr) for name in ("k", "v", "slots", "tables", "lens")),
        *((name, _i64) for name in ("max_blocks", "block_size", "block_stride", "token_stride", "head_stride")),
    ]


class Shape(ctypes.Structure):
    _fields_ = [
        *((name, _i64) for name in ("hidden", "heads", "kv_heads", "head_dim", "inter")),
        ("eps", _f32),
        ("scale", _f32),
    ]


@functools.cache
def _enabled() -> bool:
    """The library loaded, its attention kernel on, and INFLEET_CPU_DECODE_LAYER is not "python" (read once)."""
    return os.environ.get("INFLEET_CPU_DECODE_LAYER", "c") != "python" and cpu_attention.available()


@dataclass(frozen=True)
class Step:
    """What every layer of one decode step shares: the rows' slots, block tables and lengths, in the kernel's
    integer type, and the RoPE tables."""

    rows: int
    slots: Tensor
    tables: Tensor
    lens: Tensor
    cos: Tensor
    sin: Tensor


def step(x: Tensor, meta: AttentionMetadata, cos: Tensor, sin: Tensor) -> Step | None:
    """The step's shared inputs when it can run layers in C: bf16 rows on the CPU, decodes only; else None."""
    rows = meta.rows
    if not (
        _enabled()
        and cpu_pointwise.available(x)
        and x.dim() == 2
        and meta.num_decode == x.shape[0]
        and rows.index is None
        and not meta.prefills
        and cos.dtype == torch.bfloat16
    ):
        return None
    return Step(
        x.shape[0],
        as_dtype(meta.slot_mapping, torch.int64, contiguous=True),
        as_dtype(rows.tables, torch.int64, contiguous=True),
        as_dtype(rows.lens, torch.int64, contiguous=True),
        cos.contiguous(),
        sin.contiguous(),
    )


def _hooked(module: nn.Module) -> bool:
    """Forward hooks on the module: C would skip them."""
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _layer_weights(layer: DecoderLayer) -> tuple[Weights, Shape] | None:
    """The layer's packed weights and shape, when every projection is a bias-free Bf16Linear; None otherwise.
    Kept on the layer after the first look (the modules do not change after loading)."""
    if "_c_decode" in layer.__dict__:
        found: tuple[Weights, Shape] | None = layer.__dict__["_c_decode"]
        return found
    from infleet.runtime.quant.tiers import Bf16Linear  # the tier module imports the kernels: import it late

    attn, mlp = layer.self_attn, layer.mlp
    projections = (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)
    norms = (layer.input_layernorm, layer.post_attention_layernorm)
    linears = [p for p in projections if type(p) is Bf16Linear and p.bias is None]
    found = None
    if (
        len(linears) == len(projections)
        and all(n.weight.dtype == torch.bfloat16 and n.weight.is_contiguous() and n.eps == norms[0].eps for n in norms)
        and not any(_hooked(m) for m in (layer, attn, mlp, *norms, *linears))  # e.g. tensor parallelism's all-reduce
    ):
        qkv, o, gate_up, down = linears
        packed = (norms[0].weight, norms[1].weight, qkv.weight, o.weight, gate_up.weight, down.weight)
        found = (
            Weights(*(t.data_ptr() for t in packed)),
            Shape(
                o.out_features,
                attn.num_heads,
                attn.num_kv_heads,
                attn.head_dim,
                down.in_features,
                norms[0].eps,
                attn.head_dim**-0.5,
            ),
        )
    layer.__dict__["_c_decode"] = found
    return found


def runs(layer: DecoderLayer, cache: KVCache) -> bool:
    """Whether this layer (and its cache) can run in C."""
    return (
        cache.k.dtype == torch.bfloat16 and cache.v.stride() == cache.k.stride() and _layer_weights(layer) is not None
    )


def forward(layer: DecoderLayer, x: Tensor, cache: KVCache, s: Step) -> Tensor:
    """The layer over the step's rows; x [rows, hidden] bf16 contiguous is updated in place and returned."""
    found = _layer_weights(layer)
    assert found is not None
    weights, shape = found
    k = cache.k
    block_stride, token_stride, head_stride, _ = k.stride()
    c = Cache(
        k.data_ptr(), cache.v.data_ptr(), s.slots.data_ptr(), s.tables.data_ptr(), s.lens.data_ptr(),
        s.tables.shape[1], k.shape[1], block_stride, token_stride, head_stride,
    )  # fmt: skip
    lib = cpu_native.library()
    assert lib is not None
    status = lib.decode_layer_bf16(
        x.data_ptr(), s.rows, s.cos.data_ptr(), s.sin.data_ptr(), ctypes.byref(weights), ctypes.byref(c),
        ctypes.byref(shape), torch.get_num_threads(),
    )  # fmt: skip
    if status:
        raise RuntimeError(f"the C decoder layer refused {s.rows} rows")
    return x
