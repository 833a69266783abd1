"""The quantization tier chooser: the cheapest tier whose quality loss is acceptable and whose fleet meets the SLO.

A tier profile lists, per model, GPU and tier, what one replica can do at the SLO (tokens/s), the memory it needs
and its quality loss against the unquantized model. It comes either from measurement (the runtime's quantization
benchmark writes one as JSON; `load_profile` reads it) or from a roofline model of the GPU (`roofline_profile`).

For a predicted load each option costs `replicas x price`. Among the options whose fleet meets the SLO with at most
`max_replicas`, those that no other beats on both cost and quality loss form the Pareto frontier; the choice is the
cheapest frontier option within `max_quality_loss`. Switching tiers is a rollout, so the chooser only moves off a
tier that still qualifies when another saves more than `margin` and has kept doing so for `dwell` seconds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from infleet.autoscaler.cost import cost_per_million_tokens, gpu_hourly_price
from infleet.autoscaler.simulator.latency_model import TIER_BYTES, LatencyModel, ModelShape, device

# Quality loss (fraction, e.g. greedy-token mismatch or relative perplexity rise) assumed when nothing was measured.
DEFAULT_QUALITY_LOSS = {"bf16": 0.0, "fp8": 0.005, "int8": 0.01, "int4": 0.04}


@dataclass(frozen=True)
class TierOption:
    tier: str
    gpu: str  # nvidia.com/gpu.product
    capacity_tokens_per_second: float  # one replica, at the SLO
    quality_loss: float
    memory_bytes: float = 0.0
    gpus_per_replica: int = 1


@dataclass(frozen=True)
class TierCost:
    option: TierOption
    replicas: int
    dollars_per_hour: float
    cost_per_million_tokens: float

    @property
    def key(self) -> tuple[str, str]:
        return self.option.tier, self.option.gpu


@dataclass(frozen=True)
class TierState:
    """What the chooser remembers between calls: the applied tier and a challenger with the time it appeared."""

    tier: str | None = None
    gpu: str | None = None
    challenger: tuple[str, str] | None = None
    challenger_since: float = 0.0


@dataclass(frozen=True)
class TierDecision:
    tier: str | None
    gpu: str | None
    replicas: int
    reason: str
    state: TierState
    frontier: tuple[TierCost, ...] = ()
    cost_per_million_tokens: float = math.nan


def price_options(
    options: Iterable[TierOption],
    load_tokens_per_second: float,
    target_utilization: float = 0.7,
    prices: Mapping[str, float] | None = None,
) -> list[TierCost]:
    """Replicas and cost of each option at the predicted load."""
    out = []
    for o in options:
        replicas = max(1, math.ceil(load_tokens_per_second / (o.capacity_tokens_per_second * target_utilization)))
        price = gpu_hourly_price(o.gpu, prices)
        dollars = price * o.gpus_per_replica * replicas
        per_million = cost_per_million_tokens(price, o.gpus_per_replica, replicas, load_tokens_per_second)
        out.append(TierCost(o, replicas, dollars, per_million))
    return out


def pareto_frontier(costs: Sequence[TierCost]) -> list[TierCost]:
    """Options not dominated on (dollars per hour, quality loss), cheapest first."""
    front = [
        c
        for c in costs
        if not any(
            d.dollars_per_hour <= c.dollars_per_hour
            and d.option.quality_loss <= c.option.quality_loss
            and (d.dollars_per_hour < c.dollars_per_hour or d.option.quality_loss < c.option.quality_loss)
            for d in costs
        )
    ]
    return sorted(front, key=lambda c: (c.dollars_per_hour, c.option.quality_loss))


def choose_tier(
    options: Sequence[TierOption],
    load_tokens_per_second: float,
    max_quality_loss: float,
    state: TierState,
    now: float,
    max_replicas: int = 1_000_000,
    target_utilization: float = 0.7,
    margin: float = 0.1,
    dwell: float = 600.0,
    prices: Mapping[str, float] | None = None,
) -> TierDecision:
    if not options:
        return TierDecision(state.tier, state.gpu, 0, "no tier profile: keep the current tier", state)
    costs = price_options(options, load_tokens_per_second, target_utilization, prices)
    feasible = [c for c in costs if c.replicas <= max_replicas]  # the fleet meets the SLO at this load
    frontier = tuple(pareto_frontier(feasible))
    qualified = [c for c in frontier if c.option.quality_loss <= max_quality_loss]
    current = next((c for c in costs if c.key == (state.tier, state.gpu)), None)
    load = f"{load_tokens_per_second:.0f} tok/s"
    if not qualified:
        why = (
            f"no tier within quality loss {max_quality_loss:g} meets the SLO at {load} with <= {max_replicas} replicas"
        )
        return TierDecision(state.tier, state.gpu, current.replicas if current else 0, why, state, frontier)
    best = qualified[0]

    def decided(c: TierCost, reason: str, new_state: TierState) -> TierDecision:
        return TierDecision(
            c.option.tier, c.option.gpu, c.replicas, reason, new_state, frontier, c.cost_per_million_tokens
        )

    describe = (
        f"{best.option.tier} on {best.option.gpu}: {best.replicas} replicas, ${best.dollars_per_hour:.2f}/h, "
        f"${best.cost_per_million_tokens:.3f}/1M tokens at {load}, quality loss {best.option.quality_loss:g}"
    )
    settled = TierState(best.option.tier, best.option.gpu)
    current_ok = (
        current is not None and current.option.quality_loss <= max_quality_loss and current.replicas <= max_replicas
    )
    if current is None or not current_ok:
        why = "no current tier" if current is None else f"current tier {state.tier} no longer qualifies"
        return decided(best, f"{why}: choose {describe}", settled)
    if best.key == current.key:
        return decided(best, f"keep {describe}", settled)
    saving = 1 - best.dollars_per_hour / current.dollars_per_hour if current.dollars_per_hour else 0.0
    if saving <= margin:
        return decided(
            current,
            f"keep {state.tier}: {best.option.tier} would save {saving:.0%}, not more than the {margin:.0%} margin",
            replace(state, challenger=None),
        )
    since = state.challenger_since if state.challenger == best.key else now
    if now - since < dwell:
        return decided(
            current,
            f"keep {state.tier} for now: {best.option.tier} saves {saving:.0%} for {now - since:.0f}s of {dwell:g}s",
            replace(state, challenger=best.key, challenger_since=since),
        )
    return decided(best, f"switch to {describe}; saves {saving:.0%} for {now - since:.0f}s", settled)


def roofline_profile(
    model: ModelShape,
    gpus: Iterable[str],
    mean_prompt: float,
    mean_output: float,
    tpot_slo: float | None = None,
    ttft_slo: float | None = None,
    tiers: Iterable[str] = tuple(TIER_BYTES),
    quality_loss: Mapping[str, float] = DEFAULT_QUALITY_LOSS,
    gpus_per_replica: int = 1,
) -> list[TierOption]:
    """Tier options from the roofline latency model; tiers whose weights do not fit the GPU are left out."""
    out = []
    for gpu in gpus:
        dev = device(gpu)
        for tier in tiers:
            lm = LatencyModel(dev, model, tier, gpus=gpus_per_replica)
            if lm.kv_capacity_tokens < mean_prompt + mean_output:
                continue
            capacity = lm.capacity(mean_prompt, mean_output, tpot_slo, ttft_slo)
            if capacity <= 0:
                continue
            out.append(TierOption(tier, dev.name, capacity, quality_loss[tier], lm.weight_bytes, gpus_per_replica))
    return out


class ProfileError(ValueError):
    pass


def load_profile(path: str | Path) -> list[TierOption]:
    """A measured tier profile: JSON `{"gpu": ..., "tiers": [{"tier", "capacity_tokens_per_second",
    "quality_loss", "memory_bytes"?, "gpu"?, "gpus_per_replica"?}, ...]}` (or `tiers` as a mapping by name)."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ProfileError(f"cannot read tier profile {path}: {err}") from None
    raw = doc.get("tiers") if isinstance(doc, dict) else None
    if isinstance(raw, dict):
        raw = [{"tier": name, **entry} for name, entry in raw.items()]
    if not isinstance(raw, list) or not raw:
        raise ProfileError(f"tier profile {path} needs a non-empty 'tiers' list or mapping")
    out = []
    for i, entry in enumerate(raw):
        try:
            option = TierOption(
                tier=str(entry["tier"]),
                gpu=str(entry.get("gpu", doc.get("gpu", "cpu"))),
                capacity_tokens_per_second=float(entry["capacity_tokens_per_second"]),
                quality_loss=float(entry["quality_loss"]),
                memory_bytes=float(entry.get("memory_bytes", 0.0)),
                gpus_per_replica=int(entry.get("gpus_per_replica", 1)),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ProfileError(f"tier profile {path}: entry {i} is missing or has a bad field: {err}") from None
        if option.capacity_tokens_per_second <= 0 or option.quality_loss < 0:
            raise ProfileError(f"tier profile {path}: entry {i} needs capacity > 0 and quality loss >= 0")
        out.append(option)
    return out
