"""The autoscaler's plug point: the spec becomes the policy's ScalingSpec, and without metrics nothing moves."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from infleet.autoscaler import policy, tiers
from infleet.cluster.testing import budget_between, capacity_cost
from infleet.operator import api, autoscaling

from .specs import good_spec


def spec_of(**overrides: Any) -> api.InferenceDeploymentSpec:
    return api.InferenceDeploymentSpec.model_validate(good_spec(**overrides))


def test_scaling_spec_carries_bounds_slos_and_windows() -> None:
    spec = spec_of(
        slo={"ttftP99": "2s", "tpotP99": "100ms"},
        scaling={
            "enabled": True,
            "minReplicas": 0,
            "maxReplicas": 6,
            "targetQueueDepth": 3,
            "scaleDownStabilization": "2m",
            "targetUtilization": 0.8,
            "forecastLead": "45s",
        },
    )
    s = autoscaling.scaling_spec(spec)
    assert (s.min_replicas, s.max_replicas, s.target_queue_per_replica) == (0, 6, 3.0)
    assert (s.ttft_slo, s.tpot_slo, s.e2e_slo) == (2.0, 0.1, None)
    assert (s.scale_up_window, s.scale_down_window) == (0.0, 120.0)
    assert (s.target_utilization, s.forecast_lead, s.objective) == (0.8, 45.0, 0.99)  # objectivePercent's default


def test_the_policy_sizes_by_the_tier_profiles_capacity_for_the_recent_mix() -> None:
    """The operator gives the policy what the simulator gives it: one replica's tokens/s at the SLO from the tier
    profile, asked about the observed token mix (longer prompts, less capacity at a TTFT SLO); none for a model no
    profile knows, which leaves the policy scaling on requests in flight."""
    spec = spec_of(
        model={"uri": "hf://meta-llama/Llama-3.1-8B-Instruct"},
        slo={"ttftP99": "2s", "tpotP99": "100ms"},
        scaling={"enabled": True, "maxReplicas": 8},
    )
    chat = policy.Observation(0.0, 1, prompt_tokens_per_request=500, output_tokens_per_request=200)
    long = policy.Observation(0.0, 1, prompt_tokens_per_request=8000, output_tokens_per_request=200)
    short = autoscaling.replica_capacity(spec, "fp8", "NVIDIA-L4", chat)
    longer = autoscaling.replica_capacity(spec, "fp8", "NVIDIA-L4", long)
    assert short and longer and longer < short
    assert autoscaling.replica_capacity(spec, "fp8", "NVIDIA-L4", policy.Observation(0.0, 1))  # reference mix
    unknown = spec_of(model={"uri": "hf://someone/unheard-of-model"})
    assert autoscaling.replica_capacity(unknown, "bf16", "NVIDIA-L4", chat) is None
    # with the capacity, what arrives is sized in tokens: 4 replicas' worth of demand asks for 4
    s = autoscaling.scaling_spec(spec, capacity=short)
    busy = policy.Observation(
        0.0, 1, ready_replicas=1, queue_depth=0, running=4, tokens_per_second=0.7 * short, tokens_per_request=700,
        arrival_rate=4 * 0.7 * short / 700,
    )  # fmt: skip
    assert policy.decide(s, busy, (), 0.0).recommendation == 4


def test_without_an_observer_the_policy_holds() -> None:
    spec = spec_of(replicas=3, scaling={"enabled": True, "minReplicas": 1, "maxReplicas": 8})
    obs = asyncio.run(autoscaling.observe(None, spec, {"readyReplicas": 3}, "x", "ns"))
    assert obs.missing and obs.replicas == 3
    decision = policy.decide(autoscaling.scaling_spec(spec), obs, (), obs.sampled_at)
    assert decision.replicas == 3 and decision.held
    out = autoscaling.status_from(decision, obs, 4)
    assert out["observed"] == {}
    assert any(c["type"] == "MetricsAvailable" and c["status"] != "True" for c in out["conditions"])


def test_observed_figures_reach_status() -> None:
    obs = policy.Observation(sampled_at=0.0, replicas=1, ttft_p99=0.8, queue_depth=2.0, tokens_per_second=150.0)
    decision = policy.Decision(replicas=1, reason="hold", recommendation=1)
    out = autoscaling.status_from(decision, obs, 1)
    assert out["observed"] == {"ttftP99Seconds": 0.8, "queueDepth": 2.0, "tokensPerSecond": 150.0}


# ---- cost and tier -----------------------------------------------------------------------------------------------

GGUF = "file:///models/SmolLM2-135M-Instruct.Q4_1.gguf"


def test_price_table_comes_from_the_chart_with_defaults_underneath() -> None:
    table = autoscaling.price_table({"INFLEET_GPU_PRICES": '{"NVIDIA-L4": 1.25, "NVIDIA-T4": 0.35}'})
    assert table["NVIDIA-L4"] == 1.25 and table["NVIDIA-T4"] == 0.35 and table["NVIDIA-H100-80GB-HBM3"] == 4.0
    assert autoscaling.price_table({"INFLEET_GPU_PRICES": "not json"})["NVIDIA-L4"] == 0.8
    assert autoscaling.price_table({"INFLEET_GPU_PRICES": '{"NVIDIA-L4": -1}'})["NVIDIA-L4"] == 0.8
    own = spec_of(cost={"gpuHourlyPrice": 2.0})
    assert autoscaling.prices_for(own, autoscaling.price_table({}))["NVIDIA-L4"] == 2.0


def test_observed_cost_is_the_cost_model_over_what_was_served() -> None:
    spec = spec_of(parallelism={"tensor": 2}, accelerator={"type": "NVIDIA-L4", "gpusPerNode": 2})
    prices = autoscaling.price_table({})
    # $0.80 x 2 GPUs x 3 replicas = $4.80/h over 100 tok/s = 360,000 tokens/h -> $13.33 per 1M
    assert autoscaling.observed_cost(spec, 3, 100.0, prices) == pytest.approx(
        4.8e6 / 360_000, rel=1e-3
    )  # stored to 4 digits
    assert autoscaling.observed_cost(spec, 3, 0.0, prices) is None  # paying for nothing served: not a number
    assert autoscaling.observed_cost(spec, 3, None, prices) is None
    assert autoscaling.observed_cost(spec_of(accelerator={"type": "NVIDIA-T4"}), 1, 10.0, prices) is None


def auto_spec(**overrides: Any) -> api.InferenceDeploymentSpec:
    base: dict[str, Any] = {
        "model": {"uri": GGUF, "servedName": "s"},
        "quantization": {"tier": "auto", "allowed": ["bf16", "int8"], "maxQualityLoss": 0.01},
        "cost": {"maxPerMillionTokens": 100.0},
        "scaling": {"enabled": True},
    }
    base.update(overrides)
    return spec_of(**base)


def test_auto_tier_follows_the_cost_budget_at_the_traffic_s_mix_with_the_measured_cpu_profile() -> None:
    """The shipped CPU profile prices the tiers at the traffic's mix: a budget between int8's capacity cost and
    bf16's (computed from the same profile, at the same mix) moves the deployment to int8, at a chat prompt with a
    long answer and, before any request, at the reference mix of 512 + 128 tokens."""
    decode_heavy = policy.Observation(
        sampled_at=0.0, replicas=1, tokens_per_second=5.0, prompt_tokens_per_request=33, output_tokens_per_request=128
    )
    prices = autoscaling.price_table({})
    chosen = autoscaling.choose_tier(auto_spec(), "bf16", decode_heavy, tiers.TierState(), 0.0, prices, "cpu")
    assert chosen is not None
    decision, source = chosen
    assert decision.tier == "bf16" and "smollm2-135m-cpu.json" in source  # best quality; the budget is loose
    assert "requests of 33 prompt + 130 output tokens" in source  # the mix it priced, to two digits
    bf16, int8 = (capacity_cost(GGUF, L4, t, mix=(33, 130)) for t in ("bf16", "int8"))
    budget = budget_between(int8, bf16)
    tight = auto_spec(cost={"maxPerMillionTokens": budget})
    chosen = autoscaling.choose_tier(tight, "bf16", decode_heavy, decision.state, 15.0, prices, "cpu")
    assert chosen is not None and chosen[0].tier == "int8", chosen[0].reason
    assert chosen[0].reason.startswith(f"bf16 (${bf16:.3g}/1M tokens at capacity) is over the ${budget:g}/1M budget")
    # before any request the reference mix (512 + 128) prices the tiers
    idle = policy.Observation(sampled_at=0.0, replicas=1)
    bf16, int8 = (capacity_cost(GGUF, L4, t) for t in ("bf16", "int8"))
    budget = budget_between(int8, bf16)
    tighter = auto_spec(cost={"maxPerMillionTokens": budget})
    chosen = autoscaling.choose_tier(tighter, "bf16", idle, tiers.TierState("bf16", L4), 30.0, prices, "cpu")
    assert chosen is not None and chosen[0].tier == "int8", chosen[0].reason
    assert chosen[0].reason.startswith(f"bf16 (${bf16:.3g}/1M tokens at capacity) is over the ${budget:g}/1M budget")
    assert "requests of 512 prompt + 128 output tokens" in chosen[1]
    explicit = spec_of(quantization={"tier": "bf16", "allowed": ["bf16"]})
    assert autoscaling.choose_tier(explicit, "bf16", idle, tiers.TierState(), 0, {}, "cpu") is None


def test_an_idle_deployment_keeps_the_mix_of_its_last_traffic() -> None:
    mixes: dict[tuple[str, str], tuple[float, float]] = {}
    key = ("ns", "d")
    busy = policy.Observation(0.0, 1, prompt_tokens_per_request=33, output_tokens_per_request=128)
    assert autoscaling.with_last_mix(busy, mixes, key) is busy and mixes[key] == (33, 128)
    idle = autoscaling.with_last_mix(policy.Observation(15.0, 1), mixes, key)
    assert (idle.prompt_tokens_per_request, idle.output_tokens_per_request) == (33, 128)
    never = autoscaling.with_last_mix(policy.Observation(15.0, 1), mixes, ("ns", "other"))
    assert never.prompt_tokens_per_request is None and autoscaling.token_mix(never) is None


def test_tiers_the_accelerator_cannot_run_are_never_chosen() -> None:
    spec = auto_spec(
        accelerator={"type": "NVIDIA-A100-SXM4-80GB"},
        quantization={"tier": "auto", "allowed": ["fp8", "bf16"], "maxQualityLoss": 0.5},
        cost={"maxPerMillionTokens": 1e-6},  # nothing fits: the cheapest runnable one
    )
    obs = policy.Observation(sampled_at=0.0, replicas=1)
    chosen = autoscaling.choose_tier(spec, None, obs, tiers.TierState(), 0.0, autoscaling.price_table({}))
    assert chosen is not None and chosen[0].tier == "bf16"  # fp8 needs FP8 tensor cores, which an A100 lacks


def test_an_unpriced_accelerator_keeps_the_tier_and_says_why() -> None:
    spec = auto_spec(accelerator={"type": "NVIDIA-L4"})
    obs = policy.Observation(sampled_at=0.0, replicas=1)
    chosen = autoscaling.choose_tier(spec, "bf16", obs, tiers.TierState(), 0.0, {}, "cpu")
    assert chosen is not None and chosen[0].tier == "bf16" and "no GPU price for NVIDIA-L4" in chosen[0].reason


def test_deployment_gauges_mirror_status_and_go_with_the_deployment() -> None:
    from prometheus_client import REGISTRY

    from infleet.operator import deployment_metrics as dm

    def value(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"namespace": "ns", "deployment": "d", **labels})

    body = {"spec": {"replicas": 3}, "status": {"replicas": 2, "tier": "bf16", "costPerMillionTokens": 1.5}}
    dm.export("ns", "d", body)
    assert value("infleet_deployment_replicas") == 2 and value("infleet_deployment_desired_replicas") == 3
    assert value("infleet_deployment_tier_info", tier="bf16") == 1
    assert value("infleet_deployment_cost_per_million_tokens") == 1.5
    dm.export("ns", "d", {"spec": {"replicas": 3}, "status": {"replicas": 3, "tier": "int8"}})
    assert value("infleet_deployment_tier_info", tier="bf16") is None  # one tier series at a time
    assert value("infleet_deployment_tier_info", tier="int8") == 1
    assert value("infleet_deployment_cost_per_million_tokens") is None  # unknown cost: no series
    dm.forget("ns", "d")
    assert value("infleet_deployment_replicas") is None and value("infleet_deployment_tier_info", tier="int8") is None


def test_each_deployments_own_objectives_are_exported_for_the_rules() -> None:
    from prometheus_client import REGISTRY

    from infleet.operator import deployment_metrics as dm

    def value(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"namespace": "ns", "deployment": "o", **labels})

    slo = {"ttftP99": "500ms", "tpotP99": "30ms", "objectivePercent": 99.5, "budgetPeriod": "7d"}
    dm.export("ns", "o", {"spec": {"slo": slo, "cost": {"maxPerMillionTokens": 0.8}}, "status": {}})
    assert value("infleet_deployment_slo_threshold_seconds", sli="ttft") == 0.5
    assert value("infleet_deployment_slo_threshold_seconds", sli="tpot") == 0.03
    assert value("infleet_deployment_slo_threshold_seconds", sli="e2e") is None  # not an objective
    assert value("infleet_deployment_slo_objective_ratio") == 0.995
    assert value("infleet_deployment_slo_budget_period_seconds") == 7 * 86400
    assert value("infleet_deployment_max_cost_per_million_tokens") == 0.8
    dm.export("ns", "o", {"spec": {"slo": {"ttftP99": "1s"}}, "status": {}})  # edited: defaults, no tpot, no limit
    assert value("infleet_deployment_slo_threshold_seconds", sli="tpot") is None
    assert value("infleet_deployment_slo_objective_ratio") == 0.99
    assert value("infleet_deployment_slo_budget_period_seconds") == 30 * 86400
    assert value("infleet_deployment_max_cost_per_million_tokens") is None
    dm.forget("ns", "o")
    assert value("infleet_deployment_slo_threshold_seconds", sli="ttft") is None
    assert value("infleet_deployment_slo_objective_ratio") is None


def test_the_operator_exports_exactly_the_gauges_the_dashboards_read() -> None:
    from infleet.api import metrics as names
    from infleet.operator import deployment_metrics as dm

    exported = {
        g._name
        for g in (
            dm.REPLICAS,
            dm.DESIRED,
            dm.TIER,
            dm.DESIRED_TIER,
            dm.COST,
            dm.THRESHOLD,
            dm.OBJECTIVE,
            dm.PERIOD,
            dm.COST_LIMIT,
        )
    }
    read = {v for k, v in vars(names).items() if k.startswith("DEPLOYMENT_") and isinstance(v, str)}
    assert exported == read


# ---- accelerator choice -------------------------------------------------------------------------------------------

A100, H100, L4 = "NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3", "NVIDIA-L4"


def test_the_chooser_moves_to_the_cheapest_allowed_product_after_the_dwell() -> None:
    # the measured CPU profile prices every product alike per replica (the local fleet runs pods on the CPU), so the
    # product with the lowest hourly price is the cheapest per token
    spec = auto_spec(accelerator={"type": A100, "allowed": [A100, L4]}, cost={})
    obs = policy.Observation(sampled_at=0.0, replicas=1, tokens_per_second=5.0)
    prices = autoscaling.price_table({})
    first = autoscaling.choose_tier(spec, "bf16", obs, tiers.TierState(), 0.0, prices, "cpu", A100)
    assert first is not None
    decision, source = first
    assert (decision.tier, decision.gpu) == ("bf16", A100), decision.reason  # a rollout waits for the dwell
    assert "on NVIDIA-L4" not in decision.reason and "saves 68%" in decision.reason
    assert source.count("smollm2-135m-cpu.json") == 2  # one profile per product
    later = autoscaling.choose_tier(spec, "bf16", obs, decision.state, autoscaling.TIER_DWELL + 1, prices, "cpu", A100)
    assert later is not None and (later[0].tier, later[0].gpu) == ("bf16", L4), later[0].reason
    assert later[0].reason.startswith("switch to bf16 on NVIDIA-L4")
    # a product without a price is never offered
    unpriced = {k: v for k, v in prices.items() if k != L4}
    kept = autoscaling.choose_tier(spec, "bf16", obs, tiers.TierState(), 1e6, unpriced, "cpu", A100)
    assert kept is not None and kept[0].gpu == A100 and "NVIDIA-L4: no GPU price" in kept[1]


def test_a_model_that_does_not_fit_a_products_memory_is_never_placed_there() -> None:
    # Llama-3.1-70B: 141 GB in bf16, 71 in int8, 44 in int4; an L4 has 24 GB, an H100 80 GB (one GPU a replica)
    spec = auto_spec(
        model={"uri": "hf://meta-llama/Llama-3.1-70B-Instruct", "servedName": "big"},
        accelerator={"type": H100, "allowed": [H100, L4]},
        quantization={"tier": "auto", "allowed": ["bf16", "int8", "int4"], "maxQualityLoss": 0.05},
        cost={},
        slo={"tpotP99": "200ms"},
    )
    obs = policy.Observation(sampled_at=0.0, replicas=1, tokens_per_second=100.0)
    chosen = autoscaling.choose_tier(spec, None, obs, tiers.TierState(), 0.0, autoscaling.price_table({}))
    assert chosen is not None
    decision, _ = chosen
    assert decision.gpu == H100 and decision.tier == "int8", decision.reason  # 71 GB: fits 80, not 24
    assert {(c.option.gpu, c.option.tier) for c in decision.frontier} <= {(H100, "int8"), (H100, "int4")}


def test_the_reconcile_renders_the_chosen_product_while_it_is_allowed() -> None:
    from infleet.operator import reconcile

    body = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": "a", "namespace": "ns", "uid": "u", "generation": 1},
        "spec": good_spec(accelerator={"type": A100, "allowed": [A100, L4]}, quantization={"tier": "auto"}),
        "status": {"accelerator": L4, "acceleratorReason": "chosen by the autoscaler: cheaper"},
    }

    def product(b: dict[str, Any]) -> str:
        spec, want, _ = reconcile.plan(b, {A100: 8, L4: 8})
        pod = want.workloads[0]["spec"]["template"]["spec"]
        term = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert spec.accelerator.type == term[0]["matchExpressions"][0]["values"][0]
        return spec.accelerator.type

    assert product(body) == L4
    assert reconcile.accelerator_reason(reconcile.plan(body, {})[0], body["status"]).startswith("chosen by")
    dropped = {**body, "spec": good_spec(accelerator={"type": A100}, quantization={"tier": "auto"})}
    assert product(dropped) == A100  # a product no longer allowed is left
    assert reconcile.accelerator_reason(reconcile.plan(dropped, {})[0], body["status"]) == (
        "set in spec.accelerator.type"
    )
