"""Quantization tiers: swap a model's nn.Linear layers for weight-only quantized ones, in place, at load time.

Tiers: `bf16` (the float weights as loaded: for a GGUF model, its dequantized weights; on a CPU with AVX512-BF16
repacked for infleet's kernel, `Bf16Linear`, the same values in the same bytes), `fp8` (e4m3, per-channel
scale), `int8` (symmetric per output channel), `int4` (asymmetric, group size 128/64/32: the largest that divides
every layer's input dimension, or the block size of the 4-bit grid the weights already sit on, see
`source_grid_block`). Every nn.Linear is quantized. An lm_head tied to the embedding (SmolLM2, Qwen2 small models)
is one table read twice: in `int8` and `int4` it becomes int8 per vocabulary row (`Int8Head`), and the embedding
looks its rows up in those same codes (`Int8Embedding`), so the float table is gone from memory and a decode step
reads a quarter of its bytes (on SmolLM2 the table is 113 MB in fp32: two thirds of an int4 step's bytes); on the
CPU its logits stay fp32 (`dispatch.int8_logits`). A GGUF holds that table in 8 bits too (Q8_0). `fp8` keeps it
float. Activations stay in the model's dtype.

Quantize on the device the model will run on, after choosing the kernel backend: the int4 layer picks its packing
then (PyTorch's CPU int4 kernel layout for PyTorch on CPU, the portable nibble layout the Triton kernel reads).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from infleet.api.tiers import TIERS
from infleet.runtime.kernels import cpu_woq, dispatch
from infleet.runtime.kernels.casts import as_dtype
from infleet.runtime.quant import formats as F

ModuleT = TypeVar("ModuleT", bound=nn.Module)


class TierError(ValueError):
    """The tier cannot apply to this model; the message says why. Raised before any layer is changed."""


def with_bias(out: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Biases stay in float: they are a few kilobytes, and quantizing them buys nothing."""
    return out if bias is None else out + bias.to(out.dtype)


class Fp8Linear(nn.Module):
    """Weights in e4m3 with a float32 scale per output channel: `torch._scaled_mm` on GPUs with fp8 matmul, the
    Triton dequant-GEMM on other GPUs, an upcast per call on CPU (see dispatch.fp8_linear)."""

    weight: torch.Tensor
    scale: torch.Tensor

    bias: torch.Tensor | None

    def __init__(self, q: F.Fp8Weight) -> None:
        super().__init__()
        self.register_buffer("bias", None)  # set by quantize_model when the float layer has one (Qwen2 q/k/v)
        self.out_features, self.in_features = q.weight.shape
        self.register_buffer("weight", q.weight)
        self.register_buffer("scale", q.scale)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Fp8Linear:
        return cls(F.quantize_fp8(linear.weight.detach()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return with_bias(dispatch.fp8_linear(x, self.weight, self.scale), self.bias)


def _cpu_kernel(device: torch.device, out_features: int, in_features: int, group_size: int | None = None) -> bool:
    """Whether a layer on `device` runs on infleet's CPU bf16/int8/int4 kernel (`kernels/cpu_woq.py`)."""
    return (
        device.type == "cpu"
        and dispatch.backend() != "triton"
        and cpu_woq.available()
        and cpu_woq.fits(out_features, in_features, group_size)
    )


class Bf16Linear(nn.Module):
    """bf16 weights on infleet's CPU kernel, packed as the pairs its dot product reads (`cpu_woq.pack_bf16`): the
    bf16 tier's layers on a CPU with AVX512-BF16. Products are summed in float32, then rounded to bf16 once."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("bias", None)  # set by quantize_model when the float layer has one (Qwen2 q/k/v)
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", cpu_woq.pack_bf16(weight.detach()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:  # the kernel rounds to bf16 activations as it stores
            return cpu_woq.bf16_gemm(x, self.weight, x.dtype)
        return as_dtype(with_bias(cpu_woq.bf16_gemm(x, self.weight), self.bias), x.dtype)


class Bf16Head(Bf16Linear):
    """A tied lm_head in bf16 on the CPU kernel: float32 logits, never rounded to bf16's 8 bits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return with_bias(cpu_woq.bf16_gemm(x, self.weight), self.bias)


class Bf16Embedding(nn.Module):
    """The embedding of a tied Bf16Head: rows looked up in the head's packed table (one table in memory)."""

    weight: torch.Tensor

    def __init__(self, head: Bf16Head) -> None:
        super().__init__()
        self.register_buffer("weight", head.weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return cpu_woq.bf16_rows(self.weight, ids)  # [T, hidden]


def _replace(parent: nn.Module, attr: str, linear: nn.Linear, new: nn.Module) -> None:
    """Put `new` where `linear` was, keeping its bias (float)."""
    if linear.bias is not None:
        new.bias = linear.bias.detach()
    setattr(parent, attr, new)


def _tied_head(model: nn.Module) -> tuple[nn.Linear, nn.Embedding] | None:
    """A LlamaForCausalLM's lm_head and embedding when they share one table, else None."""
    head, embed = getattr(model, "lm_head", None), getattr(getattr(model, "model", None), "embed_tokens", None)
    if isinstance(head, nn.Linear) and isinstance(embed, nn.Embedding):
        return (head, embed) if head.weight.data_ptr() == embed.weight.data_ptr() else None
    return None


def _pack_bf16(model: nn.Module) -> int:
    """The bf16 tier on a CPU with AVX512-BF16: every bf16 nn.Linear the kernel fits becomes a Bf16Linear (a tied
    lm_head a Bf16Head, its embedding reading the same table). Returns the layers swapped; 0 elsewhere."""
    swapped = 0
    for parent, attr, linear in _linears(model):
        w = linear.weight
        if w.dtype == torch.bfloat16 and _cpu_kernel(w.device, *w.shape):
            _replace(parent, attr, linear, Bf16Linear(w))
            swapped += 1
    tied = _tied_head(model)
    if tied is not None:
        w = tied[0].weight
        if tied[0].bias is None and w.dtype == torch.bfloat16 and _cpu_kernel(w.device, *w.shape):
            packed = Bf16Head(w)
            model.lm_head = packed
            model.model.embed_tokens = Bf16Embedding(packed)
            swapped += 1
    return swapped


class Int8Linear(nn.Module):
    """Int8 codes [out, in] with a float32 scale per output channel (symmetric: no zero point). On a CPU with
    AVX512-BF16 the codes are kept in the layout of infleet's kernel instead (`woq`, `cpu_woq.pack_int8`)."""

    weight: torch.Tensor
    scale: torch.Tensor

    bias: torch.Tensor | None

    def __init__(self, q: F.Int8Weight) -> None:
        super().__init__()
        self.register_buffer("bias", None)  # set by quantize_model when the float layer has one (Qwen2 q/k/v)
        self.out_features, self.in_features = q.weight.shape
        self.woq = _cpu_kernel(q.weight.device, self.out_features, self.in_features)
        self.register_buffer("weight", cpu_woq.pack_int8(q.weight) if self.woq else q.weight)
        self.register_buffer("scale", q.scale)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        return cls(F.quantize_int8(linear.weight.detach()))

    def codes(self) -> torch.Tensor:
        """The int8 codes [out, in], whatever the layout kept."""
        return cpu_woq.unpack_int8(self.weight) if self.woq else self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.woq:  # the kernel stores x's dtype (bf16 rounded as a cast rounds)
            out = cpu_woq.int8_gemm(x, self.weight, self.scale, x.dtype)
        else:
            out = dispatch.int8_linear(x, self.weight, self.scale)
        return with_bias(out, self.bias)


class Int4Linear(nn.Module):
    """Int4 codes, two per byte, with a scale and offset per group of `group_size` input columns."""

    packed: torch.Tensor
    scales_and_zeros: torch.Tensor  # CPU layout only
    scale: torch.Tensor  # portable layout only
    offset: torch.Tensor  # portable layout only

    bias: torch.Tensor | None

    def __init__(self, q: F.Int4Weight, device: torch.device) -> None:
        super().__init__()
        self.register_buffer("bias", None)  # set by quantize_model when the float layer has one (Qwen2 q/k/v)
        self.out_features, self.in_features = q.shape
        self.group_size = q.group_size
        # infleet's CPU kernel where it runs; else PyTorch's CPU kernel, which wants N % 16 == 0; other shapes, and
        # the Triton kernel, use the portable layout.
        self.woq = _cpu_kernel(device, self.out_features, self.in_features, self.group_size) and cpu_woq.fits_float16(
            q.scale, q.offset
        )
        self.cpu_layout = (
            not self.woq
            and device.type == "cpu"
            and dispatch.backend() != "triton"
            and dispatch.CPU_INT4_MM
            and self.out_features % 16 == 0
        )
        if self.woq:
            packed, scale, offset = cpu_woq.pack_int4(q.packed, q.scale, q.offset)
            self.register_buffer("packed", packed)
            self.register_buffer("scale", scale)
            self.register_buffer("offset", offset)
        elif self.cpu_layout:
            self.register_buffer("packed", dispatch.to_cpu_int4_pack(F.unpack_int4(q.packed)))
            self.register_buffer("scales_and_zeros", dispatch.cpu_int4_scales_and_zeros(q.scale, q.offset))
        else:
            self.register_buffer("packed", q.packed)
            self.register_buffer("scale", q.scale)
            self.register_buffer("offset", q.offset)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int) -> Int4Linear:
        w = linear.weight.detach()
        return cls(F.quantize_int4(w, group_size), w.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.woq:  # the kernel stores x's dtype (bf16 rounded as a cast rounds)
            out = cpu_woq.int4_gemm(x, self.packed, self.scale, self.offset, self.group_size, x.dtype)
        elif self.cpu_layout:
            out = dispatch.cpu_int4_linear(x, self.packed, self.scales_and_zeros, self.group_size)
        else:
            out = dispatch.int4_linear(x, self.packed, self.scale, self.offset, self.group_size)
        return with_bias(out, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}"


class Int8Head(Int8Linear):
    """A tied lm_head in int8: float32 logits on the CPU (infleet's kernel, else `dispatch.int8_logits`), the int8
    GEMM elsewhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = (
            cpu_woq.int8_gemm(x, self.weight, self.scale)
            if self.woq
            else dispatch.int8_logits(x, self.weight, self.scale)
        )
        return with_bias(logits, self.bias)


class Int8Embedding(nn.Module):
    """The embedding of a tied lm_head quantized to int8: a lookup dequantizes only the rows it reads, from the
    head's own codes and scales (one table in memory, as before quantization), in whichever layout the head keeps."""

    weight: torch.Tensor
    scale: torch.Tensor

    def __init__(self, head: Int8Head, dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("weight", head.weight)  # [vocab, hidden] int8 (or cpu_woq's blocks), shared with the head
        self.register_buffer("scale", head.scale)  # [vocab]
        self.woq = head.woq
        self.dtype = dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        codes = cpu_woq.int8_rows(self.weight, ids) if self.woq else self.weight[ids]
        return codes.to(self.dtype) * self.scale[ids].unsqueeze(-1).to(self.dtype)  # [T, hidden]


def _quantize_tied_head(model: nn.Module) -> bool:
    """A LlamaForCausalLM's lm_head tied to its embedding -> Int8Head + Int8Embedding on the same codes."""
    tied = _tied_head(model)
    if tied is None:
        return False
    head, embed = tied
    q = Int8Head(F.quantize_int8(head.weight.detach()))
    model.lm_head = q
    model.model.embed_tokens = Int8Embedding(q, embed.weight.dtype)  # type: ignore[union-attr]
    return True


@dataclass
class TierInfo:
    """What quantize_model did: reported by the runtime (`/v1/models`, logs) and written to the tier profile."""

    tier: str
    layers: int = 0  # nn.Linear layers replaced (a tied lm_head counts once)
    group_size: int | None = None  # int4 only
    group_size_reason: str | None = None
    weight_bytes: int = 0  # parameters and buffers after the swap, each shared tensor counted once
    float_weight_bytes: int = 0  # the same before it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_bytes(model: nn.Module) -> int:
    """Bytes of parameters and persistent buffers (tied weights once): the weight memory a decode step reads from."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() in seen or t.device.type == "meta":
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def _tied_weights(model: nn.Module) -> set[int]:
    """data_ptr of every weight an nn.Embedding shares (a tied lm_head reads the embedding's table)."""
    return {m.weight.data_ptr() for m in model.modules() if isinstance(m, nn.Embedding)}


def _linears(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, layer) for every nn.Linear to quantize, so each can be replaced with setattr."""
    tied = _tied_weights(model)
    return [
        (parent, attr, child)
        for parent in model.modules()
        for attr, child in parent.named_children()
        if isinstance(child, nn.Linear) and child.weight.data_ptr() not in tied
    ]


def source_grid_block(model: nn.Module, rows: int = 64) -> int | None:
    """The block size of a 4-bit grid the weights already sit on, or None.

    A GGUF Q4_0/Q4_1 checkpoint dequantized on load has at most 16 distinct values in every block of 32 weights;
    int4 groups aligned with those blocks reproduce them exactly, while larger groups re-round them onto a second
    grid (on SmolLM2's Q4_1 weights: perplexity +51% with groups of 64, -0.2% with 32). Checks the first `rows`
    rows of every layer to quantize, largest block first.
    """
    weights = [linear.weight.detach()[:rows] for _, _, linear in _linears(model)]
    for size in F.INT4_GROUP_SIZES:
        if weights and all(w.shape[1] % size == 0 for w in weights):
            blocks = (w.reshape(-1, size).sort(dim=1).values for w in weights)
            if all(int(((b.diff(dim=1) != 0).sum(dim=1) + 1).max()) <= 16 for b in blocks):
                return size
    return None


def int4_group_size(model: nn.Module) -> tuple[int, str]:
    """(group size, why): the source's 4-bit block if the weights sit on one, else the largest of 128/64/32 that
    divides every Linear's input dimension; TierError naming the dimensions when none does."""
    grid = source_grid_block(model)
    if grid is not None:
        return grid, f"the weights already sit on a 4-bit grid in blocks of {grid} (a 4-bit source checkpoint)"
    dims = {linear.in_features for _, _, linear in _linears(model)}
    for size in F.INT4_GROUP_SIZES:
        if all(d % size == 0 for d in dims):
            return size, f"the largest of {F.INT4_GROUP_SIZES} dividing every input dimension {sorted(dims)}"
    bad = sorted(d for d in dims if d % F.INT4_GROUP_SIZES[-1])
    raise TierError(
        f"tier int4 cannot apply: input dimension(s) {bad} are not divisible by any int4 group size "
        f"{F.INT4_GROUP_SIZES}; serve this model with --tier int8 or fp8"
    )


@torch.no_grad()
def quantize_model(model: nn.Module, tier: str) -> TierInfo:
    """Replace every nn.Linear by the tier's layer, in place. Checks that the whole model fits the tier first."""
    if tier not in TIERS:
        raise TierError(f"unknown tier {tier!r}; choose one of {', '.join(TIERS)}")
    info = TierInfo(tier=tier, float_weight_bytes=model_bytes(model))
    if tier == "bf16":
        info.layers = _pack_bf16(model)
        info.weight_bytes = model_bytes(model)
        return info
    linears = _linears(model)
    if not linears:
        raise TierError(f"tier {tier} cannot apply: the model has no nn.Linear layers")
    group_size, reason = int4_group_size(model) if tier == "int4" else (None, None)
    for parent, attr, linear in linears:
        new: nn.Module
        if tier == "fp8":
            new = Fp8Linear.from_linear(linear)
        elif tier == "int8":
            new = Int8Linear.from_linear(linear)
        else:
            assert group_size is not None
            new = Int4Linear.from_linear(linear, group_size)
        _replace(parent, attr, linear, new)
        info.layers += 1
    if tier in ("int8", "int4") and _quantize_tied_head(model):
        info.layers += 1
    info.group_size, info.group_size_reason = group_size, reason
    info.weight_bytes = model_bytes(model)
    return info


def apply_tier(model: ModuleT, tier: str) -> ModuleT:
    """The engine's entry point: quantize in place, keep the TierInfo on the model as `tier_info`, return it."""
    info = quantize_model(model, tier)
    model.tier_info = info  # type: ignore[assignment]
    return model
