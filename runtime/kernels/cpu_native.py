"""infleet's small C kernels for the CPU (`cpu_*.c` beside this file), built into one shared library and loaded.

PyTorch has no CPU kernel for four of the runtime's hot paths: decode attention over the paged KV cache
(`cpu_attention.py`), logits through an int8 LM head in float32 (`cpu_logits.py`), bf16/int8/int4 linear layers
whose time does not grow row by row (`cpu_woq.py`), and RMSNorm, SiLU-and-multiply and RoPE in one call each
instead of chains of small ops (`cpu_pointwise.py`); with them, a whole bf16 decoder layer over decode rows in one
call (`cpu_decode_layer.py`). Each is a short C file.

The library is compiled once per source version with the system's C compiler (`cc`, about a second) into a cache
directory, or found there prebuilt (the runtime image builds it: docker/runtime.Dockerfile). Without a compiler
and without a prebuilt library the runtime keeps PyTorch's paths and says so once in its log.

    python -m infleet.runtime.kernels.cpu_native [DIR]   # build into DIR (default: the cache) and print the path
"""

from __future__ import annotations

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

log = logging.getLogger(__name__)

SOURCES = tuple(sorted(Path(__file__).parent.glob("cpu_*.c")))
HEADERS = tuple(sorted(Path(__file__).parent.glob("cpu_*.h")))  # included by the sources: part of their version
# -ffast-math for the compile only (reassociated sums, vector expf from libmvec): linked with it, the library would
# carry crtfastmath.o, whose constructor flushes denormals to zero for the whole process when it loads.
CFLAGS = ("-O3", "-ffast-math", "-fPIC", "-fopenmp", "-std=c11")
# libgomp, not a second OpenMP runtime: torch has loaded its own libgomp.so.1 by then, and the soname resolves to it
LDFLAGS = ("-shared", "-fopenmp", "-lm")

_i64, _ptr, _i32, _f32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int, ctypes.c_float
SIGNATURES = {  # C entry point -> argument types (each returns an int: 0, or -1 on a refused input)
    "decode_attention": [_ptr, _ptr, _ptr, _i32, _ptr, _ptr, _ptr, *[_i64] * 9, _f32, _i32],
    "int8_logits": [_ptr, _ptr, _ptr, _ptr, _i64, _i64, _i64, _i32],
    "woq_available": [],
    "bf16_gemm": [_ptr, _ptr, _ptr, _i32, _i64, _i64, _i64, _i32],
    "int8_gemm": [_ptr, _ptr, _ptr, _ptr, _i32, _i64, _i64, _i64, _i32],
    "int4_gemm": [_ptr, _ptr, _ptr, _ptr, _ptr, _i32, _i64, _i64, _i64, _i64, _i32],
    "rms_norm_bf16": [_ptr, _ptr, _ptr, _ptr, _ptr, _i64, _i64, _f32, _i32],
    "silu_and_mul_bf16": [_ptr, _ptr, _ptr, _i64, _i64, _i64, _i32],
    "rope_bf16": [_ptr, _i64, _ptr, _ptr, _ptr, _i64, _i64, _i64, _i32],
    "decode_layer_bf16": [_ptr, _i64, _ptr, _ptr, _ptr, _ptr, _ptr, _i32],
}


def cache_dir() -> Path:
    """Where the compiled library lives: INFLEET_KERNEL_DIR, else $INFLEET_CACHE/kernels, else ~/.cache/infleet."""
    if explicit := os.environ.get("INFLEET_KERNEL_DIR"):
        return Path(explicit)
    return Path(os.environ.get("INFLEET_CACHE", Path.home() / ".cache" / "infleet")) / "kernels"


def library_name() -> str:
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES + HEADERS) + " ".join(CFLAGS + LDFLAGS).encode())
    return f"infleet_cpu-{digest.hexdigest()[:16]}.so"


def build(directory: Path | None = None) -> Path:
    """Compile the kernels into `directory` (atomically: concurrent builders each rename a whole file)."""
    directory = directory or cache_dir()
    target = directory / library_name()
    if target.exists():
        return target
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (cc) on PATH")
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        objects = [Path(tmp) / f"{source.stem}.o" for source in SOURCES]
        for source, obj in zip(SOURCES, objects, strict=True):
            subprocess.run([compiler, *CFLAGS, "-c", str(source), "-o", str(obj)], check=True, capture_output=True)
        out = Path(tmp) / target.name
        subprocess.run([compiler, *map(str, objects), *LDFLAGS, "-o", str(out)], check=True, capture_output=True)
        os.replace(out, target)
    return target


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None (with one log line saying why) when they can be neither found nor built."""
    try:
        lib = ctypes.CDLL(str(build()))
    except (OSError, RuntimeError, subprocess.CalledProcessError) as err:
        detail = err.stderr.decode(errors="replace")[-500:] if isinstance(err, subprocess.CalledProcessError) else err
        log.warning("infleet's CPU kernels are unavailable (%s); the runtime uses PyTorch's paths", detail)
        return None
    for name, argtypes in SIGNATURES.items():
        getattr(lib, name).argtypes = argtypes
        getattr(lib, name).restype = ctypes.c_int
    return lib


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
