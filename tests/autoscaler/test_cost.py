"""Cost arithmetic: the formula of docs/architecture.md and the price table."""

from __future__ import annotations

import math

import pytest

from infleet.autoscaler.cost import (
    DEFAULT_GPU_PRICES,
    cost_of_gpu_hours,
    cost_per_million_tokens,
    gpu_hourly_price,
    price_table,
)


def test_formula() -> None:
    # $4/h x 2 GPUs x 3 replicas = $24/h; 10,000 tok/s = 36M tok/h -> $0.6667 per 1M tokens
    assert cost_per_million_tokens(4.0, 2, 3, 10_000) == pytest.approx(24 / 36)
    assert cost_per_million_tokens(4.0, 1, 1, 0) == math.inf
    assert cost_per_million_tokens(0.0, 1, 0, 0) == 0.0


def test_run_totals_match_the_rate_formula() -> None:
    # one replica for an hour at 1,000 tok/s is 1 GPU-hour and 3.6M tokens
    assert cost_of_gpu_hours(1.0, 0.8, 3.6e6) == pytest.approx(cost_per_million_tokens(0.8, 1, 1, 1000))


def test_price_table_keys_are_gpu_feature_discovery_products_and_overridable() -> None:
    assert set(DEFAULT_GPU_PRICES) == {"NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-80GB", "NVIDIA-L4"}
    assert gpu_hourly_price("NVIDIA-L4", {"NVIDIA-L4": 0.5}) == 0.5
    assert price_table({"cpu": 0.05})["cpu"] == 0.05
    with pytest.raises(KeyError, match="no GPU price for 'NVIDIA-B200'"):
        gpu_hourly_price("NVIDIA-B200")
    with pytest.raises(ValueError, match="non-negative"):
        price_table({"NVIDIA-L4": -1.0})
