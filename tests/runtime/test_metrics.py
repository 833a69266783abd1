"""RuntimeMetrics on its own: names, labels and values as Prometheus scrapes them."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from infleet.runtime.metrics import RuntimeMetrics

DOCUMENTED_NAMES = {
    "infleet_num_requests_running",
    "infleet_num_requests_waiting",
    "infleet_kv_cache_usage_perc",
    "infleet_time_to_first_token_seconds",
    "infleet_inter_token_latency_seconds",
    "infleet_e2e_request_latency_seconds",
    "infleet_request_queue_time_seconds",
    "infleet_prompt_tokens_total",
    "infleet_generation_tokens_total",
    "infleet_prefix_cache_queries_total",
    "infleet_prefix_cache_hits_total",
    "infleet_num_preemptions_total",
    "infleet_request_success_total",
}


def scrape(metrics: RuntimeMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted({"model_name": "m", "tier": "int8", **labels}.items())))
    return samples[key]


def test_every_design_name_is_exported_before_any_traffic() -> None:
    names = {name for name, _ in scrape(RuntimeMetrics("m", "int8"))}
    missing = {n for n in DOCUMENTED_NAMES if n not in names and f"{n}_count" not in names}
    assert not missing


def test_values_follow_the_engine_reports() -> None:
    m = RuntimeMetrics("m", "int8")
    m.set_queue(running=3, waiting=5, kv_usage=0.25)
    m.request_finished(
        prompt_tokens=7, generation_tokens=4, queue_time=0.02, ttft=0.1, itls=[0.03, 0.04, 0.05], e2e=0.3,
        finish_reason="stop",
    )  # fmt: skip
    m.request_finished(
        prompt_tokens=2, generation_tokens=0, queue_time=None, ttft=None, itls=[], e2e=0.01, finish_reason="abort"
    )
    m.prefix_cache(queries=32, hits=16)
    m.preemptions(2)
    s = scrape(m)
    assert value(s, "infleet_num_requests_running") == 3
    assert value(s, "infleet_num_requests_waiting") == 5
    assert value(s, "infleet_kv_cache_usage_perc") == 0.25
    assert value(s, "infleet_prompt_tokens_total") == 9
    assert value(s, "infleet_generation_tokens_total") == 4
    assert value(s, "infleet_time_to_first_token_seconds_count") == 1
    assert value(s, "infleet_inter_token_latency_seconds_count") == 3
    assert abs(value(s, "infleet_inter_token_latency_seconds_sum") - 0.12) < 1e-9
    assert value(s, "infleet_inter_token_latency_seconds_bucket", le="0.025") == 0
    assert value(s, "infleet_inter_token_latency_seconds_bucket", le="0.05") == 3
    assert value(s, "infleet_e2e_request_latency_seconds_count") == 2
    assert value(s, "infleet_request_queue_time_seconds_count") == 1
    assert value(s, "infleet_prefix_cache_queries_total") == 32
    assert value(s, "infleet_prefix_cache_hits_total") == 16
    assert value(s, "infleet_num_preemptions_total") == 2
    assert value(s, "infleet_request_success_total", finish_reason="stop") == 1
    assert value(s, "infleet_request_success_total", finish_reason="abort") == 1
    assert value(s, "infleet_request_success_total", finish_reason="length") == 0


def test_instances_do_not_share_a_registry() -> None:
    a, b = RuntimeMetrics("m", "int8"), RuntimeMetrics("m", "int8")
    a.preemptions(1)
    assert value(scrape(a), "infleet_num_preemptions_total") == 1
    assert value(scrape(b), "infleet_num_preemptions_total") == 0


def test_rename_moves_every_series_to_the_new_model_name() -> None:
    m = RuntimeMetrics("old", "int8")
    m.rename("m")
    s = scrape(m)
    assert value(s, "infleet_prompt_tokens_total") == 0
    assert not [key for key in s if ("model_name", "old") in key[1]]
