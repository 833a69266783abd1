"""A Llama-family decoder in plain PyTorch: RMSNorm, RoPE (with Llama-3 scaling), grouped-query attention, SwiGLU.

Every projection is an `nn.Linear` with Hugging Face's name (q_proj ... down_proj, embed_tokens, lm_head), bias-free
but Qwen2's q/k/v, so quantization can swap modules by walking the tree and tensor parallelism can shard by name
(a bias by its weight's rows). Mistral is this same decoder; Qwen2 is it with those biases. A model instance
owns the decoder layers `[layer_start, layer_end)`, the unit pipeline parallelism splits on. The forward pass takes a
flattened batch (all sequences' new tokens end to end) with per-token positions and a paged KV cache.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple, TypeVar

import torch
from torch import Tensor, nn

from infleet.runtime.config import ModelConfig
from infleet.runtime.kernels import cpu_decode_layer, cpu_pointwise
from infleet.runtime.kernels import dispatch as kernels
from infleet.runtime.model.attention import AttentionMetadata, KVCache, paged_attention

ModuleT = TypeVar("ModuleT", bound=nn.Module)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return kernels.rms_norm(x, self.weight, self.eps)[0]

    def add_forward(self, x: Tensor, residual: Tensor) -> tuple[Tensor, Tensor]:
        """(norm(x + residual), x + residual): the Triton kernel fuses the add into the norm's one pass."""
        normed, summed = kernels.rms_norm(x, self.weight, self.eps, residual)
        assert summed is not None
        return normed, summed


def rope_inv_freq(config: ModelConfig) -> Tensor:
    """Inverse frequencies, adjusted by the config's rope scaling (none, linear or Llama-3)."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = config.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / float(scaling["factor"])
    if kind == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
        old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_ctx / low, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
        return torch.where(medium, smoothed, scaled)
    raise ValueError(f"unsupported rope scaling type {kind!r} (supported: default, linear, llama3)")


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables indexed by each token's position (rotate-half layout, as in Hugging Face)."""

    cos: Tensor
    sin: Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        inv_freq = rope_inv_freq(config)
        pos = torch.arange(config.max_position_embeddings, dtype=torch.float32)
        freqs = pos[:, None] * inv_freq[None, :]
        self.register_buffer("cos", freqs.cos(), persistent=False)
        self.register_buffer("sin", freqs.sin(), persistent=False)

    def forward(self, positions: Tensor, dtype: torch.dtype) -> RopeTables:
        """The step's tables, looked up once and shared by every layer: cos [T, 1, D] and the signed sin
        [T, 1, D] (-sin on the first half), so a rotation is two multiplies and an add."""
        cos, sin = self.cos[positions], self.sin[positions]  # [T, D/2]
        return RopeTables(
            torch.cat((cos, cos), dim=-1).unsqueeze(1).to(dtype), torch.cat((-sin, sin), dim=-1).unsqueeze(1).to(dtype)
        )


class RopeTables(NamedTuple):
    cos: Tensor  # [T, 1, D]
    sin: Tensor  # [T, 1, D], -sin then sin

    def rotate(self, x: Tensor) -> Tensor:
        """x [T, H, D] rotated: (x1 c - x2 s, x2 c + x1 s), computed as x * cos + (x2, x1) * signed sin (the same
        products and sums, so the same bits); bf16 on the CPU in one C call with the same roundings."""
        if cpu_pointwise.available(x) and x.dim() == 3:
            return cpu_pointwise.rope(x, self.cos, self.sin)
        x1, x2 = x.chunk(2, dim=-1)
        return x * self.cos + torch.cat((x2, x1), dim=-1) * self.sin


def concat_linears(*linears: nn.Linear) -> nn.Linear:
    """One nn.Linear whose output is the given layers' outputs side by side: one GEMM reads every weight of the
    group in one call. Each output column is the same dot product as before, so the same bits; a tier quantizes
    the result as it would each part (scales are per output row)."""
    first = linears[0]
    biased = [lin.bias is not None for lin in linears]
    if any(biased) and not all(biased):
        raise ValueError("linears to concatenate must all have a bias or none")
    out = nn.Linear(first.in_features, sum(lin.out_features for lin in linears), bias=all(biased), device="meta")
    with torch.no_grad():
        out.weight = nn.Parameter(torch.cat([lin.weight for lin in linears]))
        if out.bias is not None:
            out.bias = nn.Parameter(torch.cat([lin.bias for lin in linears if lin.bias is not None]))
    return out


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=config.attention_bias)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=config.attention_bias)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=config.attention_bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)
        self.qkv_proj: nn.Module | None = None  # q, k and v in one layer, once `fuse` has run

    def fuse(self) -> None:
        """q_proj, k_proj and v_proj become one `qkv_proj` (one GEMM instead of three small ones per layer)."""
        if self.qkv_proj is not None:
            return
        self.qkv_proj = concat_linears(self.q_proj, self.k_proj, self.v_proj)
        del self.q_proj, self.k_proj, self.v_proj

    def project(self, x: Tensor, rope: RopeTables) -> tuple[Tensor, Tensor, Tensor]:
        """x [T, hidden] -> q [T, H, D] and k [T, Hkv, D], both rotated, and v [T, Hkv, D]."""
        t, d = x.shape[0], self.head_dim
        if self.qkv_proj is not None:
            q, k, v = self.qkv_proj(x).split((self.num_heads * d, self.num_kv_heads * d, self.num_kv_heads * d), -1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = rope.rotate(q.view(t, self.num_heads, d))
        k = rope.rotate(k.view(t, self.num_kv_heads, d))
        return q, k, v.view(t, self.num_kv_heads, d)

    def forward(self, x: Tensor, rope: RopeTables, cache: KVCache, meta: AttentionMetadata) -> Tensor:
        return self.o_proj(paged_attention(*self.project(x, rope), cache, meta))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.gate_up_proj: nn.Module | None = None  # gate and up in one layer, once `fuse` has run

    def fuse(self) -> None:
        """gate_proj and up_proj become one `gate_up_proj`."""
        if self.gate_up_proj is not None:
            return
        self.gate_up_proj = concat_linears(self.gate_proj, self.up_proj)
        del self.gate_proj, self.up_proj

    def forward(self, x: Tensor) -> Tensor:
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(kernels.silu_and_mul(gate, up))


def fuse_projections(model: ModuleT) -> ModuleT:
    """Fuse q/k/v and gate/up in every decoder layer of `model` (a whole model or a pipeline stage), in place.

    Call it after loading (and sharding) and before the tier: a step then makes four projection calls per layer
    instead of seven, with the same results. Not with LoRA, whose adapters attach to each projection by name.
    """
    for module in list(model.modules()):
        if isinstance(module, Attention | MLP):
            module.fuse()
    return model


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, rope: RopeTables, cache: KVCache, meta: AttentionMetadata) -> Tensor:
        h, x = self.post_attention_layernorm.add_forward(self.self_attn(self.input_layernorm(x), rope, cache, meta), x)
        return x + self.mlp(h)


class LlamaModel(nn.Module):
    """The embedding, this instance's decoder layers and the final norm (Hugging Face's `model.` prefix)."""

    def __init__(self, config: ModelConfig, num_layers: int) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """Parameter names match Hugging Face's (`model.layers.3.self_attn.q_proj.weight`, ...)."""

    def __init__(self, config: ModelConfig, layer_start: int = 0, layer_end: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.layer_start = layer_start
        self.layer_end = config.num_hidden_layers if layer_end is None else layer_end
        self.model = LlamaModel(config, self.layer_end - self.layer_start)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.rope = RotaryEmbedding(config)

    @classmethod
    def empty(
        cls,
        config: ModelConfig,
        dtype: torch.dtype,
        layer_start: int = 0,
        layer_end: int | None = None,
        device: torch.device | str = "cpu",
    ) -> LlamaForCausalLM:
        """Allocate without random initialisation (it costs seconds at this size); load_weights fills it."""
        with torch.device("meta"):
            model = cls(config, layer_start, layer_end)
        model = model.to_empty(device=device).to(dtype)
        model.rope = RotaryEmbedding(config).to(device)  # buffers computed at init are lost by to_empty
        if config.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        return model

    @property
    def num_layers(self) -> int:
        return self.layer_end - self.layer_start

    def forward(
        self, input_ids: Tensor, positions: Tensor, kv_caches: list[KVCache], meta: AttentionMetadata
    ) -> Tensor:
        """Hidden states `[T, hidden]` after the final norm; call `compute_logits` on the rows to sample from."""
        x = self.model.embed_tokens(input_ids)
        rope = self.rope(positions, x.dtype)
        c_step = cpu_decode_layer.step(x, meta, rope.cos, rope.sin)  # a decode step whose layers can run in C
        if c_step is not None:
            x = x.clone(memory_format=torch.contiguous_format)  # the C layers update their input in place
        for layer, cache in zip(self.model.layers, kv_caches, strict=True):
            if c_step is not None and isinstance(layer, DecoderLayer) and cpu_decode_layer.runs(layer, cache):
                x = cpu_decode_layer.forward(layer, x, cache, c_step)
            else:
                x = layer(x, rope, cache, meta)
        return self.model.norm(x)

    def compute_logits(self, hidden: Tensor) -> Tensor:
        return self.lm_head(hidden).float()

    def load_weights(self, weights: Iterable[tuple[str, Tensor]]) -> None:
        """Copy Hugging Face-named tensors in; layers outside this instance's range are skipped."""
        params = dict(self.named_parameters(remove_duplicate=False))
        seen: set[str] = set()
        for name, tensor in weights:
            if name.startswith("model.layers."):
                index = int(name.split(".")[2])
                if not self.layer_start <= index < self.layer_end:
                    continue
                name = name.replace(f"model.layers.{index}.", f"model.layers.{index - self.layer_start}.", 1)
            if name not in params:
                if "rotary_emb" in name:
                    continue
                raise ValueError(f"unexpected weight {name!r} for a Llama model")
            param = params[name]
            if param.shape != tensor.shape:
                raise ValueError(f"weight {name!r} has shape {tuple(tensor.shape)}, expected {tuple(param.shape)}")
            with torch.no_grad():
                param.copy_(tensor)
            seen.add(name)
        tied = {"lm_head.weight", "model.embed_tokens.weight"}
        if self.config.tie_word_embeddings and seen & tied:
            seen |= tied
        missing = set(params) - seen
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} weights, e.g. {sorted(missing)[0]!r}")
