"""KV-cache sizing: a CPU's budget is a share of the memory limit unless given; blocks never exceed the budget."""

from __future__ import annotations

import pytest
import torch

from infleet.runtime.config import DEFAULT_CPU_KV_SHARE, EngineConfig, memory_limit_bytes
from infleet.runtime.engine.memory import KVCacheTooSmall, kv_cache_budget, num_kv_blocks


def test_cpu_budget_defaults_to_a_share_of_the_memory_limit() -> None:
    budget, how = kv_cache_budget(EngineConfig(device="cpu"), torch.device("cpu"))
    assert budget == int(memory_limit_bytes() * DEFAULT_CPU_KV_SHARE)
    assert "memory limit" in how


def test_cpu_budget_from_the_flag() -> None:
    budget, how = kv_cache_budget(EngineConfig(device="cpu", kv_cache_memory=123456), torch.device("cpu"))
    assert budget == 123456 and "--kv-cache-memory" in how


def test_blocks_fit_the_budget_and_the_demand() -> None:
    assert num_kv_blocks(10_000, 1_000, max_num_seqs=64, max_model_len=4096, block_size=16) == 10
    assert num_kv_blocks(10**9, 1_000, max_num_seqs=2, max_model_len=64, block_size=16) == 8
    with pytest.raises(KVCacheTooSmall, match="does not hold one block"):
        num_kv_blocks(999, 1_000, max_num_seqs=1, max_model_len=16, block_size=16)


def test_engine_sizes_its_cache_from_the_budget(tiny_llama: tuple[object, object, object]) -> None:
    from infleet.runtime.engine.engine import LLMEngine
    from infleet.runtime.engine.model_runner import kv_bytes_per_token

    model, config, tokenizer = tiny_llama
    cfg = EngineConfig(device="cpu", kernels="torch", kv_cache_memory=1 << 20)
    engine = LLMEngine(model, config, tokenizer, cfg)  # type: ignore[arg-type]
    per_block = kv_bytes_per_token(model, torch.float32) * 16  # type: ignore[arg-type]
    assert engine.block_manager.num_blocks == (1 << 20) // per_block
    assert engine.runner.kv_caches[0].k.shape[0] == engine.block_manager.num_blocks
