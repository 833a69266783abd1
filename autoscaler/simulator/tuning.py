"""Equal tuning (docs/autoscaler-evaluation.md, section 4): every policy gets the same optuna search over its own
parameters, on a workload's tuning part only.

The objective is the fewest GPU-hours subject to at least 99% SLO attainment. optuna's TPE sampler takes the
constraint (`Trial.set_constraint`: attainment below the target is infeasible), and the objective itself adds a penalty
per point of attainment missed, so an infeasible trial never looks cheap to the sampler either. The choice is the
feasible trial with the fewest GPU-hours, else the trial with the highest attainment (and `feasible` says so).

`space` is the one place that maps a trial to a policy; `build` replays that mapping from a stored parameter dict,
so the evaluation runs exactly the policy the search chose.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import optuna

from infleet.autoscaler.latency_model import LatencyModel
from infleet.autoscaler.simulator.baselines import HPA, KEDA, KPA, HPABehavior, Static
from infleet.autoscaler.simulator.experiment import Workload, causal_capacity, describe, infleet_spec
from infleet.autoscaler.simulator.fleet import Policy, SimConfig, SimResult, simulate
from infleet.autoscaler.simulator.infleet_policy import InfleetPolicy
from infleet.autoscaler.simulator.trace import TraceRequest

TUNING_SEED = 0
TUNING_TRIALS = 16  # sized for a shared 2-core machine (docs/autoscaler-evaluation.md, section 4)
TARGET = 0.99
PENALTY_GPU_HOURS_PER_POINT = 1.0  # added to the objective per percentage point of attainment below TARGET
TUNED = ("infleet", "hpa-gpu-util", "keda-queue", "knative-kpa", "static-peak")


@dataclass(frozen=True)
class Context:
    """What a policy may be told about its deployment, all of it from the tuning part (never the evaluation part)."""

    model: LatencyModel
    config: SimConfig
    workload: Workload  # the tuning part's token mix, capacity and 60 s peak: static-peak's size


Suggest = Callable[[str, float, float, bool], float]  # (name, low, high, log) -> value


def space(name: str, suggest: Suggest, ctx: Context) -> Policy:
    """The policy `name` with its own parameters drawn by `suggest` (section 4's search spaces)."""
    if name == "infleet":
        spec = replace(
            infleet_spec(ctx.config, model=ctx.model),
            target_utilization=suggest("target_utilization", 0.3, 1.0, False),
            scale_down_window=suggest("scale_down_window", 0.0, 900.0, False),
            forecast_lead=ctx.config.cold_start,
        )
        return InfleetPolicy(spec, causal_capacity(ctx.model, ctx.config))
    if name == "hpa-gpu-util":
        target = suggest("target_utilization", 0.3, 0.95, False)
        behavior = HPABehavior(
            tolerance=suggest("tolerance", 0.0, 0.2, False), down_window=suggest("down_window", 0.0, 600.0, False)
        )
        return HPA(target_utilization=target, behavior=behavior)
    if name == "keda-queue":
        per_replica = suggest("queue_per_replica", 0.5, 16.0, True)
        return KEDA(per_replica, HPABehavior(down_window=suggest("down_window", 0.0, 600.0, False)))
    if name == "knative-kpa":
        return KPA(
            target_concurrency=suggest("target_concurrency", 1.0, 64.0, True),
            target_utilization=suggest("target_utilization", 0.3, 1.0, False),
            stable_window=suggest("stable_window", 6.0, 120.0, False),
            panic_threshold=suggest("panic_threshold", 1.1, 4.0, False),
        )
    if name == "static-peak":  # the tuning part's 60 s peak at a tuned fraction of a replica's capacity
        share = suggest("peak_utilization", 0.3, 1.0, False)
        return Static(max(1, math.ceil(ctx.workload.peak_tokens_per_second / (ctx.workload.capacity * share))))
    raise ValueError(f"unknown policy {name!r}; tunable: {', '.join(TUNED)}")


def build(name: str, params: dict[str, float], ctx: Context) -> Policy:
    """The policy a stored trial chose."""

    def stored(key: str, low: float, high: float, log: bool) -> float:
        return params[key]

    return space(name, stored, ctx)


@dataclass(frozen=True)
class Trial:
    number: int
    params: dict[str, float]
    attainment: float
    gpu_hours: float

    @property
    def feasible(self) -> bool:
        return self.attainment >= TARGET


@dataclass
class Tuned:
    policy: str
    trials: list[Trial]
    chosen: Trial
    feasible: bool  # False: no trial reached TARGET; `chosen` is the one with the highest attainment
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def pareto(self) -> list[Trial]:
        """Trials on the tuning Pareto front (higher attainment, fewer GPU-hours), by GPU-hours."""
        front = [
            t
            for t in self.trials
            if not any(
                (o.attainment >= t.attainment and o.gpu_hours < t.gpu_hours)
                or (o.attainment > t.attainment and o.gpu_hours <= t.gpu_hours)
                for o in self.trials
            )
        ]
        unique = {(round(t.attainment, 6), round(t.gpu_hours, 6)): t for t in sorted(front, key=lambda t: -t.number)}
        return sorted(unique.values(), key=lambda t: t.gpu_hours)


def context_for(tuning: Sequence[TraceRequest], model: LatencyModel, config: SimConfig) -> Context:
    """The deployment's facts as the tuning part shows them."""
    return Context(model, config, describe(tuning, model, config))


def tune(
    name: str,
    tuning: Sequence[TraceRequest],
    ctx: Context,
    trials: int = TUNING_TRIALS,
    seed: int = TUNING_SEED,
) -> Tuned:
    """`trials` replays of the tuning part (cold-start seed 0, warm-up from its own end), TPE seeded with `seed`."""
    started = time.monotonic()
    config = replace(ctx.config, seed=0)
    seen: dict[str, SimResult] = {}  # static-peak's parameter maps many values onto one fleet size

    def objective(trial: optuna.Trial) -> float:
        def suggest(key: str, low: float, high: float, log: bool) -> float:
            return trial.suggest_float(key, low, high, log=log)

        policy = space(name, suggest, ctx)
        key = f"static x{policy.replicas}" if isinstance(policy, Static) else ""
        result = seen.get(key) if key else None
        if result is None:
            result = simulate(tuning, ctx.model, policy, config)
            if key:
                seen[key] = result
        attainment = result.slo_attainment(config.ttft_slo, config.tpot_slo)
        gpu_hours = result.gpu_seconds / 3600
        trial.set_user_attr("attainment", attainment)
        trial.set_user_attr("gpu_hours", gpu_hours)
        trial.set_constraint("attainment", TARGET - attainment)  # > 0: infeasible, and TPE samples away from it
        return gpu_hours + PENALTY_GPU_HOURS_PER_POINT * 100 * max(0.0, TARGET - attainment)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    study.optimize(objective, n_trials=trials)
    done = [
        Trial(t.number, dict(t.params), float(t.user_attrs["attainment"]), float(t.user_attrs["gpu_hours"]))
        for t in study.trials
        if t.state == optuna.trial.TrialState.COMPLETE
    ]
    feasible = [t for t in done if t.feasible]
    if feasible:
        chosen = min(feasible, key=lambda t: (t.gpu_hours, t.number))
    else:
        chosen = max(done, key=lambda t: (t.attainment, -t.gpu_hours, -t.number))
    tuned = Tuned(name, done, chosen, bool(feasible), time.monotonic() - started)
    if not feasible:
        tuned.notes.append(f"no trial reached {TARGET:.0%}: chosen is the highest attainment, {chosen.attainment:.2%}")
    return tuned


def as_json(tuned: Tuned) -> dict[str, Any]:
    return {
        "feasible": tuned.feasible,
        "chosen": {
            "trial": tuned.chosen.number,
            "params": tuned.chosen.params,
            "attainment": round(tuned.chosen.attainment, 5),
            "gpu_hours": round(tuned.chosen.gpu_hours, 4),
        },
        "trials": len(tuned.trials),
        "seconds": round(tuned.seconds, 1),
        "notes": tuned.notes,
    }
