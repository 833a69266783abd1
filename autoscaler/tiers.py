"""The quantization tier chooser: the cheapest tier whose quality loss is acceptable and whose fleet meets the SLO.

A tier profile lists, per model, GPU and tier, what one replica can do at the SLO (tokens/s), the memory it needs
and its quality loss against the unquantized model. It comes either from measurement (the runtime's quantization
benchmark writes one as JSON; `load_profile` reads it) or from a roofline model of the GPU (`roofline_profile`).

For a predicted load each option costs `replicas x price`. Among the options whose fleet meets the SLO with at most
`max_replicas`, those that no other beats on both cost and quality loss form the Pareto frontier; the choice is the
cheapest frontier option within `max_quality_loss`. Switching tiers is a rollout, so the chooser only moves off a
tier that still qualifies when another saves more than `margin` and has kept doing so for `dwell` seconds.

With a cost budget (`spec.cost.maxPerMillionTokens`) the budget is the constraint and quality the goal: the choice is
the lowest-quality-loss tier whose *capacity cost* fits the budget, the $/1M tokens of one replica's capacity at the
planned utilization (`price x GPUs x 1e6 / (3600 x capacity x utilization)`). That is the cost the fleet approaches
as the autoscaler sizes it to the load, and it depends on the tier alone: at a load below one replica the minimum
replicas set the cost whatever the tier, so judging tiers by the integer-replica cost there would make every tier
equal and the budget meaningless. A tier over the budget is left at once when another fits it; a move to a better
tier that the budget allows waits `dwell` seconds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from infleet.autoscaler.cost import cost_per_million_tokens, gpu_hourly_price
from infleet.autoscaler.latency_model import TIER_BYTES, LatencyModel, ModelShape, device

# Quality loss (fraction, e.g. greedy-token mismatch or relative perplexity rise) assumed when nothing was measured.
DEFAULT_QUALITY_LOSS = {"bf16": 0.0, "fp8": 0.005, "int8": 0.01, "int4": 0.04}


@dataclass(frozen=True)
class TierOption:
    tier: str
    gpu: str  # nvidia.com/gpu.product
    capacity_tokens_per_second: float  # one replica, at the SLO, prompt + output (decode alone while prefill is set)
    quality_loss: float
    memory_bytes: float = 0.0
    gpus_per_replica: int = 1
    prefill_tokens_per_second: float | None = None  # measured: capacity is decode tokens/s until `at_mix`

    def at_mix(self, mean_prompt: float, mean_output: float) -> TierOption:
        """This option with its capacity in prompt + output tokens/s at a request mix; unchanged when it is already.

        A measured replica decodes `capacity` tokens/s at full batch and prefills `prefill` tokens/s, so a request
        holds it for `output / decode + prompt / prefill` seconds (prefill and decode share the same compute)."""
        prefill = self.prefill_tokens_per_second
        if prefill is None:
            return self
        seconds = mean_output / self.capacity_tokens_per_second + mean_prompt / prefill  # one request's hold
        capacity = (mean_prompt + mean_output) / seconds
        return replace(self, capacity_tokens_per_second=capacity, prefill_tokens_per_second=None)


@dataclass(frozen=True)
class TierCost:
    option: TierOption
    replicas: int
    dollars_per_hour: float
    cost_per_million_tokens: float  # the fleet of `replicas` at the predicted load
    capacity_cost_per_million_tokens: float = math.nan  # one replica's capacity at the planned utilization

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


def replica_count(n: int) -> str:
    return f"{n} replica" if n == 1 else f"{n} replicas"


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
        at_capacity = cost_per_million_tokens(
            price, o.gpus_per_replica, 1, o.capacity_tokens_per_second * target_utilization
        )
        out.append(TierCost(o, replicas, dollars, per_million, at_capacity))
    return out


def pareto_frontier(costs: Sequence[TierCost], by_capacity_cost: bool = False) -> list[TierCost]:
    """Options not dominated on (cost, quality loss), cheapest first. Cost: dollars per hour at the predicted load,
    or with `by_capacity_cost` the $/1M tokens of the tier's capacity (the budget's measure)."""

    def cost(c: TierCost) -> float:
        return c.capacity_cost_per_million_tokens if by_capacity_cost else c.dollars_per_hour

    front = [
        c
        for c in costs
        if not any(
            cost(d) <= cost(c)
            and d.option.quality_loss <= c.option.quality_loss
            and (cost(d) < cost(c) or d.option.quality_loss < c.option.quality_loss)
            for d in costs
        )
    ]
    return sorted(front, key=lambda c: (cost(c), c.option.quality_loss))


@dataclass(frozen=True)
class _Field:
    """What both choosers start from: the priced options that meet the SLO within `max_replicas`, their Pareto
    frontier, those within the quality floor, and the current tier's own pricing."""

    frontier: tuple[TierCost, ...]
    qualified: list[TierCost]
    current: TierCost | None
    load: str

    @classmethod
    def of(
        cls,
        options: Sequence[TierOption],
        load_tokens_per_second: float,
        max_quality_loss: float,
        state: TierState,
        max_replicas: int,
        target_utilization: float,
        prices: Mapping[str, float] | None,
        by_capacity_cost: bool = False,
    ) -> _Field | TierDecision:
        """The field, or the decision to keep the current tier when no option qualifies."""
        costs = price_options(options, load_tokens_per_second, target_utilization, prices)
        feasible = [c for c in costs if c.replicas <= max_replicas]  # the fleet meets the SLO at this load
        frontier = tuple(pareto_frontier(feasible, by_capacity_cost=by_capacity_cost))
        qualified = [c for c in frontier if c.option.quality_loss <= max_quality_loss]
        current = next((c for c in costs if c.key == (state.tier, state.gpu)), None)
        load = f"{load_tokens_per_second:.0f} tok/s"
        if not qualified:
            why = (
                f"no tier within quality loss {max_quality_loss:g} meets the SLO at {load} "
                f"with <= {max_replicas} replicas"
            )
            return TierDecision(state.tier, state.gpu, current.replicas if current else 0, why, state, frontier)
        return cls(frontier, qualified, current, load)

    def decided(self, c: TierCost, reason: str, new_state: TierState) -> TierDecision:
        return TierDecision(
            c.option.tier, c.option.gpu, c.replicas, reason, new_state, self.frontier, c.cost_per_million_tokens
        )


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
    max_cost_per_million_tokens: float | None = None,
) -> TierDecision:
    if not options:
        return TierDecision(state.tier, state.gpu, 0, "no tier profile: keep the current tier", state)
    if max_cost_per_million_tokens is not None:
        return _choose_within_budget(
            options,
            load_tokens_per_second,
            max_quality_loss,
            state,
            now,
            max_replicas,
            target_utilization,
            margin,
            dwell,
            prices,
            max_cost_per_million_tokens,
        )
    field = _Field.of(
        options, load_tokens_per_second, max_quality_loss, state, max_replicas, target_utilization, prices
    )
    if isinstance(field, TierDecision):
        return field
    qualified, current, load, decided = field.qualified, field.current, field.load, field.decided
    best = qualified[0]

    describe = (
        f"{best.option.tier} on {best.option.gpu}: {replica_count(best.replicas)}, ${best.dollars_per_hour:.2f}/h, "
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
    return _after_dwell(
        best, current, state, now, dwell, decided, f"saves {saving:.0%}", f"switch to {describe}; saves {saving:.0%}"
    )


def _after_dwell(
    best: TierCost,
    current: TierCost,
    state: TierState,
    now: float,
    dwell: float,
    decided: Callable[[TierCost, str, TierState], TierDecision],
    gain: str,
    switch: str,
) -> TierDecision:
    """Move to `best` only once it has been the better choice for `dwell` seconds (hysteresis against flapping)."""
    since = state.challenger_since if state.challenger == best.key else now
    if now - since < dwell:
        return decided(
            current,
            f"keep {state.tier} for now: {best.option.tier} {gain} for {now - since:.0f}s of {dwell:g}s",
            replace(state, challenger=best.key, challenger_since=since),
        )
    return decided(best, f"{switch} for {now - since:.0f}s", TierState(best.option.tier, best.option.gpu))


def _choose_within_budget(
    options: Sequence[TierOption],
    load_tokens_per_second: float,
    max_quality_loss: float,
    state: TierState,
    now: float,
    max_replicas: int,
    target_utilization: float,
    margin: float,
    dwell: float,
    prices: Mapping[str, float] | None,
    budget: float,
) -> TierDecision:
    """The best quality whose capacity cost fits the budget; the cheapest when none fits (see the module text)."""
    field = _Field.of(
        options, load_tokens_per_second, max_quality_loss, state, max_replicas, target_utilization, prices, True
    )
    if isinstance(field, TierDecision):
        return field
    qualified, current, load, decided = field.qualified, field.current, field.load, field.decided
    affordable = [c for c in qualified if c.capacity_cost_per_million_tokens <= budget]
    # the frontier runs from cheap to good: the last affordable option is the best quality the budget buys
    best = affordable[-1] if affordable else qualified[0]

    def priced(c: TierCost) -> str:
        return f"${c.capacity_cost_per_million_tokens:.3g}/1M tokens at capacity"

    fits = f"within the ${budget:g}/1M budget" if affordable else f"over the ${budget:g}/1M budget: no tier fits it"
    describe = (
        f"{best.option.tier} on {best.option.gpu} ({priced(best)}, {fits}; quality loss "
        f"{best.option.quality_loss:g}; {replica_count(best.replicas)} at {load})"
    )
    settled = TierState(best.option.tier, best.option.gpu)
    if current is None:
        return decided(best, f"no current tier: choose {describe}", settled)
    if current.option.quality_loss > max_quality_loss or current.replicas > max_replicas:
        return decided(best, f"current tier {state.tier} no longer qualifies: choose {describe}", settled)
    over = current.capacity_cost_per_million_tokens > budget
    if over and affordable:
        return decided(best, f"{state.tier} ({priced(current)}) is over the ${budget:g}/1M budget: {describe}", settled)
    if best.key == current.key:
        return decided(best, f"keep {describe}", settled)
    if over:  # nothing fits: move to the cheapest only when it is clearly cheaper
        saving = 1 - best.capacity_cost_per_million_tokens / current.capacity_cost_per_million_tokens
        if saving <= margin:
            return decided(
                current,
                f"keep {state.tier}: no tier fits the ${budget:g}/1M budget and "
                f"{best.option.tier} would save only {saving:.0%}",
                replace(state, challenger=None),
            )
        gain = f"costs {saving:.0%} less"
    elif best.option.quality_loss < current.option.quality_loss:
        gain = f"fits the budget with quality loss {best.option.quality_loss:g} < {current.option.quality_loss:g}"
    else:
        return decided(current, f"keep {state.tier}: within the ${budget:g}/1M budget", replace(state, challenger=None))
    return _after_dwell(best, current, state, now, dwell, decided, gain, f"switch to {describe}")


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
    "quality_loss", "memory_bytes"?, "gpu"?, "gpus_per_replica"?, "prefill_tokens_per_second"?}, ...]}` (or `tiers`
    as a mapping by name). With `prefill_tokens_per_second` (what `infleet.runtime.quant.profile` writes) the
    capacity is decode tokens/s and `TierOption.at_mix` turns it into prompt + output tokens/s; without it, the
    capacity is taken as prompt + output tokens/s at the SLO already."""
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
                prefill_tokens_per_second=float(entry["prefill_tokens_per_second"])
                if entry.get("prefill_tokens_per_second") is not None
                else None,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ProfileError(f"tier profile {path}: entry {i} is missing or has a bad field: {err}") from None
        prefill = option.prefill_tokens_per_second
        if option.capacity_tokens_per_second <= 0 or option.quality_loss < 0 or (prefill is not None and prefill <= 0):
            raise ProfileError(f"tier profile {path}: entry {i} needs capacity and prefill > 0, quality loss >= 0")
        out.append(option)
    return out
