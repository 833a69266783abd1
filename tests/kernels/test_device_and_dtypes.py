"""Where the runtime computes and in what precision: the bf16 tier is bf16 on CPU, and what it reports is what
it loaded; `--device cuda` without CUDA stops at start with one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch

from infleet.runtime.config import DeviceUnavailable, EngineConfig
from infleet.runtime.server.launch import ServerProcess

from .tiny_model import write_tiny_llama


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama-dtypes"))


def test_bf16_tier_loads_bf16_weights_and_cache_on_cpu(tiny_dir: Path) -> None:
    from infleet.runtime.engine.engine import AsyncEngine

    engine = AsyncEngine.from_config(
        EngineConfig(model=str(tiny_dir), tier="bf16", device="cpu", kv_cache_memory=1 << 22)
    )
    model = engine.engine.model
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert engine.engine.runner.kv_caches[0].k.dtype == torch.bfloat16
    assert engine.execution["compute_dtype"] == "bfloat16"
    assert engine.execution["weight_dtypes"] == ["bfloat16"]


@pytest.mark.parametrize("tier", ["bf16", "int8"])
def test_v1_models_reports_the_loaded_dtypes(tiny_dir: Path, tier: str) -> None:
    """Compare the card with the dtypes the same load gives in this process (the server cannot fake them)."""
    from infleet.runtime.engine.engine import AsyncEngine

    cfg = EngineConfig(model=str(tiny_dir), tier=tier, device="cpu", kv_cache_memory=1 << 22)
    local = AsyncEngine.from_config(cfg)
    loaded = sorted({str(t.dtype).removeprefix("torch.") for t in local.engine.model.state_dict().values()})
    with ServerProcess(tiny_dir, "--tier", tier, "--device", "cpu", "--kv-cache-memory", str(1 << 22)) as server:
        card = httpx.get(f"{server.url}/v1/models", timeout=30).json()["data"][0]
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
        log = server.output()
    execution = card["execution"]
    assert execution["weight_dtypes"] == loaded
    assert execution["device"] == "cpu" and execution["kernel_backend"] == "torch"
    assert execution["compute_dtype"] == ("bfloat16" if tier == "bf16" else "float32")
    if tier == "bf16":
        assert loaded == ["bfloat16"]
    else:
        assert "int8" in loaded
    assert f'compute_dtype="{execution["compute_dtype"]}"' in metrics and 'kernel_backend="torch"' in metrics
    assert f"tier {tier} on cpu, compute {execution['compute_dtype']}" in log
    assert "KV cache" in log and "blocks (--kv-cache-memory 4194304 bytes)" in log


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_device_cuda_without_cuda_exits_at_start_with_one_line(tiny_dir: Path) -> None:
    cmd = [sys.executable, "-m", "infleet.runtime", "serve", "--model", str(tiny_dir), "--device", "cuda"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--device cuda" in lines[0] and "torch.cuda.is_available() is False" in lines[0]


def test_runtime_config_refuses_what_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="--device"):
        EngineConfig(device="tpu")
    with pytest.raises(ValueError, match="--kernels"):
        EngineConfig(kernels="cuda")
    with pytest.raises(ValueError, match="--gpu-memory-utilization"):
        EngineConfig(gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match="--kv-cache-memory"):
        EngineConfig(kv_cache_memory=0)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(DeviceUnavailable, match="TRITON_INTERPRET=1"):
        EngineConfig(device="cpu", kernels="triton").resolve()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert EngineConfig(device="cpu", kernels="triton").resolve().kernels == "triton"
    with pytest.raises(DeviceUnavailable, match="cannot load fp8"):
        EngineConfig(tier="fp8", device="cpu", kernels="triton").resolve()
    if not torch.cuda.is_available():
        resolved = EngineConfig().resolve()
        assert (resolved.device, resolved.kernels) == ("cpu", "torch")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit")
def test_gpu_benchmark_without_a_gpu_exits_3_and_measures_nothing(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "runtime_gpu.json"
    cmd = [sys.executable, str(root / "benchmarks" / "runtime_gpu.py"), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3 and "no CUDA GPU" in done.stderr
    assert not out.exists()
