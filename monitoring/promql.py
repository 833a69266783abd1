"""The PromQL the dashboards and the report share: one expression per quantity, per deployment, for either engine.

`sel` is a label-matcher list without braces (`namespace=~"$namespace",deployment=~"$deployment"`) and `window`
a range (`5m`, `$__rate_interval`). Each result carries the labels `namespace` and `deployment`.
"""

from __future__ import annotations

from collections.abc import Callable

from infleet.api.metrics import (
    DEPLOYMENT_COST,
    DEPLOYMENT_COST_LIMIT,
    DEPLOYMENT_DESIRED_REPLICAS,
    DEPLOYMENT_DESIRED_TIER_INFO,
    DEPLOYMENT_REPLICAS,
    DEPLOYMENT_SLO_THRESHOLD,
    DEPLOYMENT_TIER_INFO,
    ENGINES,
    EngineMetrics,
    by,
)
from infleet.monitoring import rules


def series(metric: str, sel: str) -> str:
    return f"{metric}{{{sel}}}" if sel else metric


def per_engine(build: Callable[[EngineMetrics], str]) -> str:
    """The same quantity under each engine's names, joined with `or` (a deployment runs one engine)."""
    return " or ".join(f"({build(engine)})" for engine in ENGINES)


def latency_quantile(sli: str, sel: str, window: str, q: float = 0.99) -> str:
    def one(e: EngineMetrics) -> str:
        bucket = getattr(e, sli).bucket
        return f"histogram_quantile({q:g}, sum by ({by()}, le) (rate({series(bucket, sel)}[{window}])))"

    return per_engine(one)


def queue_depth(sel: str) -> str:
    return per_engine(lambda e: f"sum by ({by()}) ({series(e.waiting, sel)})")


def running(sel: str) -> str:
    return per_engine(lambda e: f"sum by ({by()}) ({series(e.running, sel)})")


def generation_tokens_per_second(sel: str, window: str) -> str:
    return per_engine(lambda e: f"sum by ({by()}) (rate({series(e.generation_tokens, sel)}[{window}]))")


def prompt_tokens_per_second(sel: str, window: str) -> str:
    return per_engine(lambda e: f"sum by ({by()}) (rate({series(e.prompt_tokens, sel)}[{window}]))")


def request_rate(sel: str, window: str) -> str:
    return per_engine(lambda e: f"sum by ({by()}) (rate({series(e.e2e.count, sel)}[{window}]))")


def kv_cache_usage(sel: str) -> str:
    return per_engine(lambda e: f"avg by ({by()}) ({series(e.kv_cache_usage, sel)})")


def prefix_cache_hit_rate(sel: str, window: str) -> str:
    def one(e: EngineMetrics) -> str:
        hits = f"sum by ({by()}) (rate({series(e.prefix_hits, sel)}[{window}]))"
        queries = f"sum by ({by()}) (rate({series(e.prefix_queries, sel)}[{window}]))"
        return f"{hits} / ({queries} > 0)"

    return per_engine(one)


def replicas(sel: str) -> str:
    return f"max by ({by()}) ({series(DEPLOYMENT_REPLICAS, sel)})"


def desired_replicas(sel: str) -> str:
    return f"max by ({by()}) ({series(DEPLOYMENT_DESIRED_REPLICAS, sel)})"


def tier(sel: str) -> str:
    return f"max by ({by()}, tier) ({series(DEPLOYMENT_TIER_INFO, sel)})"


def desired_tier(sel: str) -> str:
    """The tier the autoscaler decided (in advisory mode: would have rolled out)."""
    return f"max by ({by()}, tier) ({series(DEPLOYMENT_DESIRED_TIER_INFO, sel)})"


def cost_per_million_tokens(sel: str) -> str:
    return f"max by ({by()}) ({series(DEPLOYMENT_COST, sel)})"


def scale_events(sel: str, window: str) -> str:
    """Replicas differing from one interval before: the moment of a scale (valued at the new count). Not
    `changes(x[interval]) > 0`: a window as short as the scrape interval holds one sample and never sees a change."""
    replicas = series(DEPLOYMENT_REPLICAS, sel)
    return f"{replicas} != {replicas} offset {window}"


def tier_changes(sel: str, window: str) -> str:
    """A tier's info series appearing: the moment a deployment moved to it."""
    info = series(DEPLOYMENT_TIER_INFO, sel)
    return f"{info} unless {info} offset {window}"


# ---- each deployment's own objectives (exported by the operator from its spec) ------------------------------------


def slo_threshold(sli: str, sel: str) -> str:
    """The deployment's own threshold for one SLI, in seconds (absent when its spec.slo does not set it)."""
    matchers = f'{sel},sli="{sli}"' if sel else f'sli="{sli}"'
    return f"max by ({by()}) ({series(DEPLOYMENT_SLO_THRESHOLD, matchers)})"


def objective(sel: str) -> str:
    """spec.slo.objectivePercent / 100, recorded by the rules."""
    return series(rules.OBJECTIVE, sel)


def cost_limit(sel: str) -> str:
    return f"max by ({by()}) ({series(DEPLOYMENT_COST_LIMIT, sel)})"


def attainment(window: str, sel: str) -> str:
    """Share of requests within the SLI's threshold: window `5m`, `1h`, ... or `period` (the budget period)."""
    return series(rules.GOOD_PERIOD if window == "period" else rules.good_ratio(window), sel)


def budget_left(sel: str) -> str:
    return series(rules.BUDGET_REMAINING, sel)


def spend_per_hour(sel: str, window: str) -> str:
    """$ per hour: the observed $/1M tokens times the tokens served per hour."""
    tokens = f"({prompt_tokens_per_second(sel, window)}) + on ({by()}) ({generation_tokens_per_second(sel, window)})"
    return f"{cost_per_million_tokens(sel)} * on ({by()}) ({tokens}) * 3600 / 1e6"
