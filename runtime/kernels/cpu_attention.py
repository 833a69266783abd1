"""Decode attention over the paged KV cache on the CPU, in place: a small C kernel (`cpu_decode_attention.c`).

PyTorch has no CPU kernel that reads a paged cache, so the fallback path gathers every decode sequence's blocks
into a padded copy in every layer and runs SDPA on it; at batch 32 the copy costs more than half of attention
itself (docs/performance.md). The C kernel reads the blocks where they are.

It is compiled once per source version with the system's C compiler (`cc`, ~1 s) into a cache directory, or found
there prebuilt (the runtime image builds it: docker/runtime.Dockerfile). Without a compiler and without a prebuilt
library the runtime keeps the gather path and says so once in its log.

    python -m infleet.runtime.kernels.cpu_attention [DIR]   # build into DIR (default: the cache) and print the path
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import Tensor
from torch.profiler import record_function

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_decode_attention.c")
CACHE_DTYPES = (torch.float32, torch.bfloat16)
PROFILE_NAME = "infleet::cpu_decode_attention"
# -ffast-math for the compile only (reassociated sums, vector expf from libmvec): linked with it, the library would
# carry crtfastmath.o, whose constructor flushes denormals to zero for the whole process when it loads.
CFLAGS = ("-O3", "-ffast-math", "-fPIC", "-fopenmp", "-std=c11")
# libgomp, not a second OpenMP runtime: torch has loaded its own libgomp.so.1 by then, and the soname resolves to it
LDFLAGS = ("-shared", "-fopenmp", "-lm")


def cache_dir() -> Path:
    """Where the compiled library lives: INFLEET_KERNEL_DIR, else $INFLEET_CACHE/kernels, else ~/.cache/infleet."""
    if explicit := os.environ.get("INFLEET_KERNEL_DIR"):
        return Path(explicit)
    return Path(os.environ.get("INFLEET_CACHE", Path.home() / ".cache" / "infleet")) / "kernels"


def library_name() -> str:
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(CFLAGS + LDFLAGS).encode()).hexdigest()[:16]
    return f"cpu_decode_attention-{digest}.so"


def build(directory: Path | None = None) -> Path:
    """Compile the kernel into `directory` (atomically: concurrent builders each rename a whole file)."""
    directory = directory or cache_dir()
    target = directory / library_name()
    if target.exists():
        return target
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (cc) on PATH")
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        obj, out = Path(tmp) / "kernel.o", Path(tmp) / target.name
        subprocess.run([compiler, *CFLAGS, "-c", str(SOURCE), "-o", str(obj)], check=True, capture_output=True)
        subprocess.run([compiler, str(obj), *LDFLAGS, "-o", str(out)], check=True, capture_output=True)
        os.replace(out, target)
    return target


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernel, or None (with one log line saying why) when it can be neither found nor built."""
    try:
        path = build()
        lib = ctypes.CDLL(str(path))
    except (OSError, RuntimeError, subprocess.CalledProcessError) as err:
        detail = err.stderr.decode(errors="replace")[-500:] if isinstance(err, subprocess.CalledProcessError) else err
        log.warning("CPU decode attention kernel unavailable (%s); decode attention gathers the paged cache", detail)
        return None
    i64, ptr, i32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    lib.decode_attention.argtypes = [ptr, ptr, ptr, i32, ptr, ptr, ptr, *[i64] * 9, ctypes.c_float, i32]
    lib.decode_attention.restype = ctypes.c_int
    return lib


def available() -> bool:
    """Whether decode attention on the CPU uses this kernel: it loads, and INFLEET_CPU_ATTENTION is not "gather"."""
    return os.environ.get("INFLEET_CPU_ATTENTION", "kernel") != "gather" and library() is not None


def _as(x: Tensor, dtype: torch.dtype) -> Tensor:
    """x itself when it already has the dtype and is contiguous (the engine's tensors are): no copy, no dispatch."""
    return x if x.dtype == dtype and x.is_contiguous() else x.to(dtype).contiguous()


def decode_attention(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, context_lens: Tensor, scale: float
) -> Tensor:
    """q `[B, H, D]`, caches `[blocks, block_size, Hkv, D]` (float32 or bfloat16, the same strides),
    block_tables `[B, max_blocks]`, context_lens `[B]` (the current token included) -> `[B, H, D]` in q's dtype.

    Shapes are checked; the tables' values are the block manager's and trusted (1 <= length <= blocks * size)."""
    lib = library()
    if lib is None:
        raise RuntimeError("the CPU decode attention kernel is not available")
    if k_cache.dtype not in CACHE_DTYPES or v_cache.dtype != k_cache.dtype:
        raise ValueError(f"caches must both be float32 or bfloat16, got {k_cache.dtype} and {v_cache.dtype}")
    if k_cache.stride() != v_cache.stride() or k_cache.stride(3) != 1 or k_cache.shape != v_cache.shape:
        raise ValueError("key and value caches must have the same shape and strides, head_dim contiguous")
    batch, heads, dim = q.shape
    if block_tables.shape[0] != batch or context_lens.shape != (batch,) or k_cache.shape[3] != dim:
        raise ValueError(f"want block_tables [{batch}, n], context_lens [{batch}] and caches of head_dim {dim}")
    q32, tables, lens = _as(q, torch.float32), _as(block_tables, torch.int64), _as(context_lens, torch.int64)
    out = torch.empty_like(q32)
    block_stride, token_stride, head_stride, _ = k_cache.stride()
    # a profile shows the C kernel by name; outside one the marker is skipped (it costs more than a small call)
    marker = record_function(PROFILE_NAME) if torch.autograd._profiler_enabled() else contextlib.nullcontext()
    with marker:
        status = lib.decode_attention(
            q32.data_ptr(),
            k_cache.data_ptr(),
            v_cache.data_ptr(),
            int(k_cache.dtype == torch.bfloat16),
            tables.data_ptr(),
            lens.data_ptr(),
            out.data_ptr(),
            batch,
            heads,
            k_cache.shape[2],
            dim,
            k_cache.shape[1],
            tables.shape[1],
            block_stride,
            token_stride,
            head_stride,
            scale,
            torch.get_num_threads(),
        )
    if status:
        raise RuntimeError(f"CPU decode attention failed for q {tuple(q.shape)}, cache {tuple(k_cache.shape)}")
    return out.to(q.dtype)


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
