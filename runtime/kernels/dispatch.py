"""Pick the kernel for each call: the Triton kernel, or PyTorch's own kernel / the reference.

The process-wide backend (`set_backend`, from `--kernels`) decides: "auto" launches Triton for CUDA tensors and
PyTorch on CPU; "triton" launches Triton for every tensor (on CPU only under TRITON_INTERPRET=1, which is how CI
runs the serving path through the kernels end to end); "torch" never launches Triton.
On a CPU with AVX512-BF16 the int8/int4 layers run on infleet's own kernel (`cpu_woq.py`, chosen per layer in
quant/tiers.py), one kernel for every row. Elsewhere PyTorch's CPU weight-only kernels (`_weight_int8pack_mm`,
`_weight_int4pack_mm_for_cpu`) are used; they are fast for bf16 activations only, so on CPU the activations are
rounded to bf16 around those calls and the result cast back. They are fast for a few rows (decode); for a prompt's
many rows the int8 weight is converted to float for one float GEMM instead. Which rows take that path is a property
of each token, never of the batch it lands in (`prompt_rows`): a request's numerics, and so its greedy tokens, do not
depend on what else is running, or on speculation.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterable, Iterator

import torch

from infleet.runtime.kernels import cpu_pointwise, cpu_woq
from infleet.runtime.kernels.activation import silu_and_mul_reference
from infleet.runtime.kernels.casts import as_dtype
from infleet.runtime.kernels.dequant_gemm import int4_gemm_reference, int8_gemm_reference
from infleet.runtime.kernels.paged_attention import paged_attention_reference
from infleet.runtime.kernels.rmsnorm import rms_norm_reference

CPU_INT8_MM = hasattr(torch.ops.aten, "_weight_int8pack_mm")
CPU_INT4_MM = hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and hasattr(
    torch.ops.aten, "_convert_weight_to_int4pack_for_cpu"
)


# From prompts of this many tokens an int8 weight converted to float per call and one float GEMM beat
# `_weight_int8pack_mm` on the CPU (SmolLM2's shapes, one thread: about even at 32 rows, 2-2.5x faster at 256)
CPU_INT8_FLOAT_ROWS = 32

# the rows of this step's forward that take the float GEMM ([rows] bool), and whether that is all of them
_PROMPT_ROWS: contextvars.ContextVar[tuple[torch.Tensor, bool] | None] = contextvars.ContextVar(
    "prompt_rows", default=None
)


def prompt_mask(sequences: Iterable[tuple[int, int, int]]) -> torch.Tensor | None:
    """The rows int8 layers on the CPU compute through the float GEMM, from (prompt length, tokens already computed,
    rows this step) per sequence in row order: its prompt tokens, when the prompt has CPU_INT8_FLOAT_ROWS or more.
    A property of each token, so a request computes alike in any batch. None when no row does."""
    flags: list[bool] = []
    for prompt_len, computed, n in sequences:
        k = max(0, min(n, prompt_len - computed)) if prompt_len >= CPU_INT8_FLOAT_ROWS else 0
        flags += [True] * k + [False] * (n - k)
    return torch.tensor(flags) if any(flags) else None


@contextlib.contextmanager
def prompt_rows(mask: torch.Tensor | None) -> Iterator[None]:
    """Mark the forward's rows that int8 layers on the CPU compute through the float GEMM (`prompt_mask`)."""
    token = _PROMPT_ROWS.set(None if mask is None else (mask, bool(mask.all())))
    try:
        yield
    finally:
        _PROMPT_ROWS.reset(token)


_BACKEND = "auto"


def set_backend(name: str) -> None:
    """ "auto" | "triton" | "torch" (see the module docstring)."""
    global _BACKEND
    if name not in ("auto", "triton", "torch"):
        raise ValueError(f"unknown kernel backend {name!r}")
    _BACKEND = name


def backend() -> str:
    return _BACKEND


def use_triton(x: torch.Tensor) -> bool:
    """Whether calls on `x` go to the Triton kernels."""
    return _BACKEND == "triton" or (_BACKEND == "auto" and x.is_cuda)


def scaled_mm_available(device: torch.device) -> bool:
    """Hardware fp8 matmul (`torch._scaled_mm`): CUDA compute capability 8.9 (Ada) and later."""
    return device.type == "cuda" and hasattr(torch, "_scaled_mm") and torch.cuda.get_device_capability(device) >= (8, 9)


def cpu_decode_attention(q: torch.Tensor, cache: torch.Tensor) -> bool:
    """Decode attention on the CPU reads the paged cache in place (the C kernel, `cpu_attention`) unless Triton runs,
    the cache is neither float32 nor bfloat16, the kernel cannot be built here, or INFLEET_CPU_ATTENTION=gather asks
    for PyTorch's gather + SDPA."""
    from infleet.runtime.kernels import cpu_attention

    return (
        not use_triton(q)
        and q.device.type == "cpu"
        and cache.dtype in cpu_attention.CACHE_DTYPES
        and cpu_attention.available()
    )


def attention_backend(device: torch.device) -> str:
    """The attention kernels used on `device` under the current backend (reported by the server)."""
    if _BACKEND == "triton" or (_BACKEND == "auto" and device.type == "cuda"):
        return "triton-paged-attention"
    if device.type == "cpu" and cpu_decode_attention(torch.empty(0), torch.empty(0)):
        return "cpu-paged-decode (C), torch-sdpa prefill"
    return "torch-sdpa"


def gemm_backend(tier: str, device: torch.device) -> str:
    """The kernel the tier's linear layers use on `device` under the current backend (reported by the server)."""
    triton_ = _BACKEND == "triton" or (_BACKEND == "auto" and device.type == "cuda")
    if tier == "bf16":
        return (
            "cpu-bf16 (C, AVX512-BF16)"
            if device.type == "cpu" and not triton_ and cpu_woq.available()
            else "torch.matmul"
        )
    if tier == "fp8":
        if triton_ and scaled_mm_available(device):
            return "torch._scaled_mm"
        return "triton-fp8-dequant-gemm" if triton_ else "torch-fp8-upcast"
    if triton_:
        return f"triton-{tier}-dequant-gemm"
    if device.type == "cpu" and cpu_woq.available():
        return f"cpu-woq-{tier} (C, AVX512-BF16)"
    if tier == "int8":
        return "torch-cpu-int8pack (prompts: float GEMM)" if CPU_INT8_MM else "torch-reference"
    return "torch-cpu-int4pack" if CPU_INT4_MM else "torch-reference"


def _gpu_activations(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float16, torch.bfloat16) else x.to(torch.bfloat16)


def int8_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [..., K] @ (int8 weight [N, K] * scale [N]).T in x's dtype."""
    x2 = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])  # the model's activations are [T, hidden] already
    if use_triton(x):
        from infleet.runtime.kernels.dequant_gemm import int8_gemm_triton

        y = int8_gemm_triton(_gpu_activations(x2), weight, scale)
    elif CPU_INT8_MM:
        marked = _PROMPT_ROWS.get()
        mask, every = marked if marked is not None else (None, False)
        if mask is None or mask.shape[0] != x2.shape[0]:  # no prompt rows (or rows other than the forward's)
            y = _int8pack(x2, weight, scale)
        elif every:
            y = _int8_float(x2, weight, scale)
        else:
            y = torch.empty(x2.shape[0], weight.shape[0], dtype=torch.float32)
            y[mask] = _int8_float(x2[mask], weight, scale)
            y[~mask] = _int8pack(x2[~mask], weight, scale).float()
    else:
        y = int8_gemm_reference(x2, weight, scale)
    y = as_dtype(y, x.dtype)
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], weight.shape[0])


def _int8pack(x2: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten._weight_int8pack_mm(as_dtype(x2, torch.bfloat16), weight, scale.to(torch.bfloat16))


def _int8_float(x2: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """[M, K] @ [K, N] in float, scaled per output channel after."""
    return torch.nn.functional.linear(x2.to(torch.float32), weight.to(torch.float32)) * scale.to(torch.float32)


# rows of an int8 LM head turned to float per matmul: 2048 x hidden fp32 stays in the caches (SmolLM2: 4.7 MB)
LOGITS_CHUNK_ROWS = 2048


def int8_logits(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Logits x [M, K] @ (int8 weight [V, K] * scale [V]).T in float32 on the CPU: each chunk of vocabulary rows
    is turned to float and multiplied in fp32, so the logits keep fp32 precision (the bf16 kernel rounds them to 8
    bits, enough to flip a greedy choice between batch shapes) while reading the table's int8 bytes: about twice as
    fast as a float32 head at 1 to 64 rows. Elsewhere: the tier's int8 GEMM."""
    if use_triton(x) or x.device.type != "cpu":
        return int8_linear(x, weight, scale).float()
    from infleet.runtime.kernels import cpu_logits

    if cpu_logits.available():  # the C kernel: the table's int8 bytes read once, no float copy
        logits = cpu_logits.int8_logits(x.reshape(-1, x.shape[-1]), weight, scale)
        return logits.reshape(*x.shape[:-1], weight.shape[0])
    x2 = x.reshape(-1, x.shape[-1]).float()
    out = torch.empty(x2.shape[0], weight.shape[0], dtype=torch.float32)
    for start in range(0, weight.shape[0], LOGITS_CHUNK_ROWS):
        rows = slice(start, start + LOGITS_CHUNK_ROWS)
        out[:, rows] = _int8_float(x2, weight[rows], scale[rows])
    return out.reshape(*x.shape[:-1], weight.shape[0])


def int4_linear(
    x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, group_size: int
) -> torch.Tensor:
    """x [..., K] @ dequantize(int4 packed [N, K // 2], scale/offset [N, K // group_size]).T, portable layout."""
    x2 = x.reshape(-1, x.shape[-1])
    if use_triton(x):
        from infleet.runtime.kernels.dequant_gemm import int4_gemm_triton

        y = int4_gemm_triton(_gpu_activations(x2), packed, scale, offset, group_size)
    else:
        y = int4_gemm_reference(x2, packed, scale, offset, group_size)
    return y.to(x.dtype).reshape(*x.shape[:-1], packed.shape[0])


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [..., K] @ (e4m3 weight [N, K] * scale [N]).T in x's dtype.

    With Triton: `torch._scaled_mm` where the GPU has fp8 matmul (activations quantized to e4m3 per row on the
    way in), else the dequant-GEMM kernel; without: the weights upcast to x's dtype per call.
    """
    x2 = x.reshape(-1, x.shape[-1])
    if use_triton(x) and scaled_mm_available(x.device):
        x16 = _gpu_activations(x2)
        x_scale = (x16.abs().amax(dim=1, keepdim=True).float() / 448.0).clamp(min=1e-12)
        x8 = (x16.float() / x_scale).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
        y = torch._scaled_mm(x8, weight.t(), scale_a=x_scale, scale_b=scale.float()[None, :], out_dtype=x16.dtype)
    elif use_triton(x):
        from infleet.runtime.kernels.dequant_gemm import int8_gemm_triton

        y = int8_gemm_triton(_gpu_activations(x2), weight, scale)
    else:
        y = torch.nn.functional.linear(x2, weight.to(x.dtype)) * scale.to(x.dtype)
    return y.to(x.dtype).reshape(*x.shape[:-1], weight.shape[0])


def to_cpu_int4_pack(codes: torch.Tensor) -> torch.Tensor:
    """[N, K] codes 0..15 -> the layout `_weight_int4pack_mm_for_cpu` reads (N must be a multiple of 16)."""
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)


def cpu_int4_scales_and_zeros(scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """[K // group, N, 2] bf16: PyTorch's CPU kernel computes (q - 8) * s + z, so z = offset + 8 * s."""
    return torch.stack([scale, offset + 8 * scale], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)


def cpu_int4_linear(
    x: torch.Tensor, packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int
) -> torch.Tensor:
    x2 = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])  # the model's activations are [T, hidden] already
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(as_dtype(x2, torch.bfloat16), packed, group_size, scales_and_zeros)
    y = as_dtype(y, x.dtype)
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], packed.shape[0])


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if use_triton(x):
        from infleet.runtime.kernels.rmsnorm import rms_norm_triton

        return rms_norm_triton(x, weight, eps, residual)
    if cpu_pointwise.available(x):
        return cpu_pointwise.rms_norm(x, weight, eps, residual)
    return rms_norm_reference(x, weight, eps, residual)


def silu_and_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    if use_triton(gate):
        from infleet.runtime.kernels.activation import silu_and_mul_triton

        return silu_and_mul_triton(gate, up)
    if cpu_pointwise.available(gate):
        return cpu_pointwise.silu_and_mul(gate, up)
    return silu_and_mul_reference(gate, up)


def paged_attention_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    if use_triton(q):
        from infleet.runtime.kernels.paged_attention import paged_attention_triton

        return paged_attention_triton(q, k_cache, v_cache, block_tables, context_lens, scale)
    return paged_attention_reference(q, k_cache, v_cache, block_tables, context_lens, scale)


def prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    tiles: torch.Tensor,
    scale: float,
    out: torch.Tensor,
) -> torch.Tensor:
    """Triton only: the PyTorch path attends prefill chunks with SDPA (model/attention.py)."""
    from infleet.runtime.kernels.prefill_attention import prefill_attention_triton

    return prefill_attention_triton(q, k_cache, v_cache, block_tables, tiles, scale, out)
