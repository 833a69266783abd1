"""The serving path through the Triton kernels, end to end over HTTP, in Triton's interpreter on CPU.

`--kernels triton` sends every RMSNorm, SiLU-and-mul, dequant GEMM and paged attention of a real server through
the Triton kernels (CPU tensors, TRITON_INTERPRET=1 from conftest.py); `--kernels torch` runs PyTorch's. Same
weights, same tier: the greedy tokens must be the same. The prompts (17 to 29 tokens, 8 prefilled a step) exercise
chunked prefill over blocks already in the cache and decode; both are sent at once, so decodes are batched.
Prompts whose reference continuation has a near-tie (top two logits within MIN_GAP) are skipped: in bf16 two
correct kernels may break such a tie differently (see tiny_model.clear_cut_prompts).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .tiny_model import clear_cut_prompts, serve_greedy, write_tiny_llama

MAX_TOKENS = 10
MIN_GAP = 0.25  # logits; bf16 rounding moved them by up to about 0.07 between the kernels on this model
COMMON = ("--kv-cache-memory", "4000000", "--max-prefill-tokens-per-step", "8", "--max-num-seqs", "4")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama-256"))


@pytest.mark.parametrize("tier", ["bf16", "int8", "int4"])
def test_triton_kernels_serve_the_same_greedy_tokens_as_torch(tiny_dir: Path, tier: str) -> None:
    prompts = clear_cut_prompts(tiny_dir, tier, count=2, n=MAX_TOKENS, min_gap=MIN_GAP)
    reference, torch_card = serve_greedy(tiny_dir, prompts, MAX_TOKENS, *COMMON, "--tier", tier, "--kernels", "torch")
    triton, triton_card = serve_greedy(tiny_dir, prompts, MAX_TOKENS, *COMMON, "--tier", tier, "--kernels", "triton")
    assert all(len(t.split()) == MAX_TOKENS for t in reference) and reference[0] != reference[1]
    assert triton == reference
    assert torch_card["execution"]["kernel_backend"] == "torch"
    assert triton_card["execution"]["kernel_backend"] == "triton"
    assert triton_card["execution"]["attention"] == "triton-paged-attention"
    expected_gemm = "torch.matmul" if tier == "bf16" else f"triton-{tier}-dequant-gemm"
    assert triton_card["execution"]["gemm"] == expected_gemm
    assert triton_card["execution"]["compute_dtype"] == ("bfloat16" if tier == "bf16" else "float32")


@pytest.mark.parametrize("tier", ["bf16", "int8"])
def test_triton_kernels_with_tensor_parallelism(tiny_dir: Path, tier: str) -> None:
    """TP=2: two ranks, each running the Triton kernels on its shard, all-reduce over gloo.

    Not int4: PyTorch's CPU int4 kernel keeps scales in bf16 and the Triton kernel in float32, so the two compute
    with slightly different weights; the near-tie guard is computed on the unsharded model, whose int4 groups
    differ from a shard's, and on this model one TP=2 continuation flips (the TP=1 int4 test above holds).
    """
    prompts = clear_cut_prompts(tiny_dir, tier, count=2, n=MAX_TOKENS, min_gap=MIN_GAP)
    reference, _ = serve_greedy(
        tiny_dir, prompts, MAX_TOKENS, *COMMON, "--tier", tier, "--kernels", "torch", "--tensor-parallel", "2"
    )
    triton, card = serve_greedy(
        tiny_dir, prompts, MAX_TOKENS, *COMMON, "--tier", tier, "--kernels", "triton", "--tensor-parallel", "2"
    )
    assert triton == reference
    assert card["execution"]["kernel_backend"] == "triton"
