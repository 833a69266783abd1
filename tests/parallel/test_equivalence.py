"""Greedy tokens from real multi-process replicas equal the single-process runtime's, prompt for prompt."""

from __future__ import annotations

from pathlib import Path

import pytest

from .support import MAX_TOKENS, parallel_generate, reference_tokens


@pytest.fixture(scope="module")
def smollm2_reference(smollm2_path: Path, prompt_ids: list[list[int]]) -> list[list[int]]:
    return reference_tokens(smollm2_path, prompt_ids, MAX_TOKENS)


@pytest.fixture(scope="module")
def tiny_reference(tiny_model_dir: Path, prompt_ids: list[list[int]]) -> list[list[int]]:
    return reference_tokens(tiny_model_dir, prompt_ids, MAX_TOKENS)


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.parametrize(
    ("tensor", "pipeline"),
    [
        # tp3xpp2 covers both splits at once in `make test`; each alone is in the exhaustive matrix
        pytest.param(3, 1, id="tp3", marks=pytest.mark.exhaustive),
        pytest.param(1, 2, id="pp2", marks=pytest.mark.exhaustive),
        pytest.param(1, 3, id="pp3", marks=pytest.mark.exhaustive),
        pytest.param(3, 2, id="tp3xpp2"),
    ],
)
def test_smollm2_parallel_matches_single_process(
    smollm2_path: Path, prompt_ids: list[list[int]], smollm2_reference: list[list[int]], tensor: int, pipeline: int
) -> None:
    assert len(prompt_ids) >= 10
    result = parallel_generate(smollm2_path, prompt_ids, tensor=tensor, pipeline=pipeline, max_tokens=MAX_TOKENS)
    assert result["tokens"] == smollm2_reference
    ranks = result["ranks"]
    assert [r["rank"] for r in ranks] == list(range(tensor * pipeline))
    # each rank holds about its share of the weights, not the whole model
    whole = sum(r["param_bytes"] for r in ranks)
    assert all(r["param_bytes"] < whole / len(ranks) * 1.6 for r in ranks)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("tensor", "pipeline", "per_stage"),
    [
        # tp4 (KV heads replicated) and tp2xpp2 (KV heads split, two stages) cover tp2 alone
        pytest.param(2, 1, 1, id="tp2", marks=pytest.mark.exhaustive),
        pytest.param(4, 1, 1, id="tp4"),
        pytest.param(2, 2, 1, id="tp2xpp2"),
        pytest.param(1, 3, 2, id="pp3-two-micro-batches-per-stage"),
    ],
)
def test_tiny_model_parallel_matches_single_process(
    tiny_model_dir: Path,
    prompt_ids: list[list[int]],
    tiny_reference: list[list[int]],
    tensor: int,
    pipeline: int,
    per_stage: int,
) -> None:
    """8 heads over 2 KV heads: tensor 2 splits the KV heads, tensor 4 replicates each on two ranks."""
    result = parallel_generate(
        tiny_model_dir,
        prompt_ids,
        tensor=tensor,
        pipeline=pipeline,
        max_tokens=MAX_TOKENS,
        micro_batches_per_stage=per_stage,
    )
    assert result["tokens"] == tiny_reference
    assert len({tuple(t) for t in tiny_reference}) > 1  # the prompts lead to different continuations
