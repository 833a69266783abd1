"""GPU-only checks of the serving path (marked `gpu`, skipped without CUDA; `make test-gpu` runs them).

Not yet run on a GPU: this project's CI machines have none. What they would show: the compiled Triton kernels,
CUDA graphs, fp8 through `torch._scaled_mm` and NCCL give the same greedy tokens as PyTorch's kernels, eagerly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from .tiny_model import clear_cut_prompts, serve_greedy, write_tiny_llama

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
MAX_TOKENS = 10


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama-gpu"))


@pytest.fixture(autouse=True)
def compiled_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    """conftest.py turns Triton's interpreter on for this process; the servers here compile for the GPU."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


COMMON = ("--device", "cuda", "--gpu-memory-utilization", "0.3", "--max-num-seqs", "8")


def serve(model: Path, prompts: list[list[int]], *args: str) -> tuple[list[str], dict[str, Any]]:
    return serve_greedy(model, prompts, MAX_TOKENS, *COMMON, *args)


def prompts_for(tiny_dir: Path, tier: str) -> list[list[int]]:
    return clear_cut_prompts(tiny_dir, tier, count=3, n=MAX_TOKENS, min_gap=0.25)


@pytest.mark.parametrize("tier", ["bf16", "fp8", "int8", "int4"])
def test_compiled_triton_kernels_match_torch_on_gpu(tiny_dir: Path, tier: str) -> None:
    prompts = prompts_for(tiny_dir, tier)
    reference, _ = serve(tiny_dir, prompts, "--tier", tier, "--kernels", "torch", "--enforce-eager")
    triton, card = serve(tiny_dir, prompts, "--tier", tier, "--kernels", "triton", "--enforce-eager")
    assert card["execution"]["device"].startswith("cuda") and card["execution"]["compute_dtype"] == "bfloat16"
    if tier == "fp8" and torch.cuda.get_device_capability() >= (8, 9):
        # _scaled_mm also quantizes the activations to e4m3, which PyTorch's path does not: once a token differs
        # the rest of the continuation does, so only the first token of each prompt is held to equality
        assert card["execution"]["gemm"] == "torch._scaled_mm"
        assert [t.split()[0] for t in triton] == [r.split()[0] for r in reference]
    else:
        assert triton == reference


def test_cuda_graphs_give_the_eager_tokens(tiny_dir: Path) -> None:
    prompts = prompts_for(tiny_dir, "bf16")
    eager, _ = serve(tiny_dir, prompts, "--kernels", "triton", "--enforce-eager")
    graphs, card = serve(tiny_dir, prompts, "--kernels", "triton")
    assert card["execution"]["cuda_graphs"] is True
    assert graphs == eager


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_tensor_parallel_over_nccl(tiny_dir: Path) -> None:
    prompts = prompts_for(tiny_dir, "bf16")
    single, _ = serve(tiny_dir, prompts, "--kernels", "triton", "--enforce-eager")
    parallel, card = serve(tiny_dir, prompts, "--kernels", "triton", "--tensor-parallel", "2")
    assert parallel == single and card["execution"]["device"] == "cuda:0"
