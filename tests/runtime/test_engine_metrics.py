"""The engine reports to RuntimeMetrics exactly what it served."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from infleet.runtime.config import EngineConfig
from infleet.runtime.engine.engine import LLMEngine
from infleet.runtime.engine.sampler import SamplingParams
from infleet.runtime.metrics import RuntimeMetrics


def test_counters_match_the_tokens_served(tiny_llama: Any) -> None:
    model, config, tokenizer = tiny_llama
    metrics = RuntimeMetrics("tiny", "bf16", registry=CollectorRegistry())
    cfg = EngineConfig(max_model_len=256, num_kv_blocks=6, block_size=16)
    engine = LLMEngine(model, config, tokenizer, cfg, metrics=metrics)
    shared = list(range(100, 140))
    prompts = [[*shared, 7], [*shared, 8, 9], [5, 6, 7]]
    params = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
    outs = engine.generate(prompts, params)
    engine.add_request("aborted", [1, 2, 3], params)
    engine.abort("aborted")

    def value(name: str, **labels: str) -> float:
        v = metrics.registry.get_sample_value(name, {"model_name": "tiny", "tier": "bf16", **labels})
        assert v is not None, name
        return v

    assert value("infleet_prompt_tokens_total") == sum(map(len, prompts)) + 3
    assert value("infleet_generation_tokens_total") == sum(map(len, outs)) == 60
    assert value("infleet_request_success_total", finish_reason="length") == 3
    assert value("infleet_request_success_total", finish_reason="abort") == 1
    assert value("infleet_time_to_first_token_seconds_count") == 3  # the aborted one never got a token
    assert value("infleet_inter_token_latency_seconds_count") == 3 * 19
    stats = engine.stats()
    assert value("infleet_prefix_cache_queries_total") == stats.prefix_cache_queries > 0
    assert value("infleet_prefix_cache_hits_total") == stats.prefix_cache_hits
    assert value("infleet_num_preemptions_total") == stats.preemptions > 0  # 6 blocks cannot hold all three
    assert value("infleet_num_requests_running") == 0 and value("infleet_kv_cache_usage_perc") == 0.0
