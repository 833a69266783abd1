"""What serving costs: GPU-hours turned into dollars per million tokens (the formula of docs/architecture.md).

`$/1M tokens = gpu_hourly_price x gpus_per_replica x replicas x 1e6 / (3600 x tokens_per_second_served)`.
The price table is keyed by the `nvidia.com/gpu.product` label that NVIDIA GPU feature discovery puts on nodes, so
a node's label finds its price directly; the chart's values mirror `DEFAULT_GPU_PRICES` and a deployment may
override any entry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

# On-demand USD per GPU-hour, rounded from 2025 public cloud list prices (one GPU of an 8-GPU H100/A100 node).
DEFAULT_GPU_PRICES: dict[str, float] = {
    "NVIDIA-H100-80GB-HBM3": 4.00,
    "NVIDIA-A100-SXM4-80GB": 2.50,
    "NVIDIA-L4": 0.80,
}


def price_table(overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """The default prices with a deployment's overrides on top; a negative or non-finite price is an error."""
    table = dict(DEFAULT_GPU_PRICES)
    for product, price in (overrides or {}).items():
        if not math.isfinite(price) or price < 0:
            raise ValueError(f"GPU price for {product!r} must be a non-negative number, got {price!r}")
        table[product] = float(price)
    return table


def gpu_hourly_price(product: str, overrides: Mapping[str, float] | None = None) -> float:
    table = price_table(overrides)
    if product not in table:
        known = ", ".join(sorted(table))
        raise KeyError(f"no GPU price for {product!r}; known: {known} (add it to the price overrides)")
    return table[product]


def cost_per_million_tokens(
    gpu_hourly_price: float, gpus_per_replica: int, replicas: float, tokens_per_second_served: float
) -> float:
    """Dollars per million tokens served; infinite when the fleet costs money and serves nothing."""
    if gpu_hourly_price < 0 or gpus_per_replica < 0 or replicas < 0 or tokens_per_second_served < 0:
        raise ValueError("prices, GPU counts, replicas and throughput must be non-negative")
    dollars_per_hour = gpu_hourly_price * gpus_per_replica * replicas
    if tokens_per_second_served == 0:
        return 0.0 if dollars_per_hour == 0 else math.inf
    return dollars_per_hour * 1e6 / (3600 * tokens_per_second_served)


def cost_of_gpu_hours(gpu_hours: float, gpu_hourly_price: float, tokens: float) -> float:
    """The same quantity over a whole run: total GPU-hours and total tokens instead of rates."""
    if tokens <= 0:
        return 0.0 if gpu_hours == 0 else math.inf
    return gpu_hours * gpu_hourly_price * 1e6 / tokens
