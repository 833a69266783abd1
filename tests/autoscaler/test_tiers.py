"""The tier chooser: Pareto frontier, constraints, hysteresis, and profiles (measured or from the roofline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infleet.autoscaler.latency_model import MODELS
from infleet.autoscaler.tiers import (
    ProfileError,
    TierOption,
    TierState,
    choose_tier,
    load_profile,
    pareto_frontier,
    price_options,
    roofline_profile,
)

L4, H100 = "NVIDIA-L4", "NVIDIA-H100-80GB-HBM3"
OPTIONS = [
    TierOption("bf16", L4, 1000, 0.0),
    TierOption("int8", L4, 2000, 0.01),
    TierOption("int4", L4, 3000, 0.05),
    TierOption("bf16", H100, 5000, 0.0),
    TierOption("fp8", H100, 5500, 0.03),  # dominated by int8 on L4 at low load: costlier and worse
]


def test_pareto_frontier_drops_dominated_options() -> None:
    costs = price_options(OPTIONS, load_tokens_per_second=2000, target_utilization=0.7, prices=None)
    replicas = {c.key: c.replicas for c in costs}
    assert replicas == {("bf16", L4): 3, ("int8", L4): 2, ("int4", L4): 1, ("bf16", H100): 1, ("fp8", H100): 1}
    front = pareto_frontier(costs)
    # cheapest first, quality improving; bf16 on H100 ($4/h) loses to bf16 on 3 L4s ($2.40/h), fp8 on H100 to both
    assert [c.key for c in front] == [("int4", L4), ("int8", L4), ("bf16", L4)]
    assert [round(c.dollars_per_hour, 2) for c in front] == [0.8, 1.6, 2.4]
    # at 1400 tok/s int4 and int8 both fit one replica: int4 is now dominated (same cost, worse quality)
    assert ("int4", L4) not in [c.key for c in pareto_frontier(price_options(OPTIONS, 1400))]


def test_picks_cheapest_within_quality_budget() -> None:
    d = choose_tier(OPTIONS, 1400, max_quality_loss=0.02, state=TierState(), now=0)
    assert (d.tier, d.gpu, d.replicas) == ("int8", L4, 1)
    assert "choose int8" in d.reason
    strict = choose_tier(OPTIONS, 1400, max_quality_loss=0.0, state=TierState(), now=0)
    assert strict.tier == "bf16" and strict.gpu == L4


def test_respects_max_replicas_at_the_predicted_load() -> None:
    # 20,000 tok/s: bf16 on L4 would need 29 replicas; with at most 10 only H100 qualifies
    d = choose_tier(OPTIONS, 20_000, max_quality_loss=0.0, state=TierState(), now=0, max_replicas=10)
    assert (d.tier, d.gpu) == ("bf16", H100)
    none = choose_tier(OPTIONS, 200_000, max_quality_loss=0.0, state=TierState("bf16", L4), now=0, max_replicas=10)
    assert none.tier == "bf16" and "no tier" in none.reason


def test_hysteresis_needs_margin_and_dwell() -> None:
    opts = [TierOption("bf16", L4, 1000, 0.0), TierOption("int8", L4, 1080, 0.0)]  # 14 vs 13 replicas: 7%
    small = choose_tier(opts, 9800, 0.01, TierState("bf16", L4), now=0, margin=0.1)
    assert small.tier == "bf16" and "margin" in small.reason

    state = TierState("bf16", L4)
    first = choose_tier(OPTIONS, 1400, 0.02, state, now=0, dwell=600)
    assert first.tier == "bf16" and "for now" in first.reason  # int8 saves 50%, but only just now
    mid = choose_tier(OPTIONS, 1400, 0.02, first.state, now=300, dwell=600)
    assert mid.tier == "bf16"
    # the load dips so the saving vanishes: the dwell clock restarts
    dip = choose_tier(OPTIONS, 500, 0.02, mid.state, now=400, dwell=600)
    assert dip.tier == "bf16" and dip.state.challenger is None
    again = choose_tier(OPTIONS, 1400, 0.02, dip.state, now=500, dwell=600)
    late = choose_tier(OPTIONS, 1400, 0.02, again.state, now=1000, dwell=600)
    assert late.tier == "bf16"
    done = choose_tier(OPTIONS, 1400, 0.02, late.state, now=1100, dwell=600)
    assert done.tier == "int8" and "switch to int8" in done.reason


def test_a_tier_that_no_longer_qualifies_is_left_at_once() -> None:
    d = choose_tier(OPTIONS, 1400, 0.02, TierState("int4", L4), now=0, dwell=600)
    assert d.tier == "int8" and "no longer qualifies" in d.reason


def test_roofline_profile_follows_memory_and_precision() -> None:
    big = roofline_profile(MODELS["llama-3.1-70b"], ["L4", "H100"], 2000, 200, tpot_slo=0.1, ttft_slo=2.0)
    assert not any(o.gpu == L4 for o in big)  # even 4-bit 70B weights (44 GB) exceed 24 GB
    assert {o.tier for o in big} == {"fp8", "int8", "int4"}  # bf16 70B (141 GB) does not fit one H100 either
    h100 = {o.tier: o.capacity_tokens_per_second for o in big}
    assert h100["int4"] > h100["fp8"]  # fp8 weights leave almost no KV cache room: int4 serves more

    small = roofline_profile(MODELS["llama-3.1-8b"], ["A100"], 2000, 200, tpot_slo=0.1, ttft_slo=2.0)
    a100 = {o.tier: o.capacity_tokens_per_second for o in small}
    assert a100["int8"] == pytest.approx(2 * a100["bf16"])  # int8 tensor cores: prefill-bound at twice the FLOPs
    assert a100["fp8"] == pytest.approx(a100["bf16"])  # no fp8 on an A100: weight-only, bf16 matmuls


def test_load_measured_profile(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({  # the runtime's infleet.tier-profile/v1 shape (extra fields are ignored)
        "schema": "infleet.tier-profile/v1", "model": "smollm2-135m", "gpu": "cpu",
        "tiers": {"bf16": {"capacity_tokens_per_second": 50, "quality_loss": 0.0, "perplexity": 12.1,
                           "decode_tokens_per_second": {"1": 15.0, "8": 50.0}},
                  "int8": {"capacity_tokens_per_second": 140, "quality_loss": 0.02, "memory_bytes": 1.4e8}},
    }))  # fmt: skip
    opts = load_profile(path)
    assert [(o.tier, o.gpu, o.capacity_tokens_per_second) for o in opts] == [("bf16", "cpu", 50), ("int8", "cpu", 140)]
    d = choose_tier(opts, 60, 0.05, TierState(), now=0, prices={"cpu": 0.05})
    assert d.tier == "int8" and d.replicas == 1
    path.write_text(json.dumps({"tiers": [{"tier": "int4"}]}))
    with pytest.raises(ProfileError, match="entry 0"):
        load_profile(path)


def test_a_measured_decode_and_prefill_give_the_capacity_at_a_request_mix(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"gpu": "cpu", "tiers": {
        "bf16": {"capacity_tokens_per_second": 50, "prefill_tokens_per_second": 500, "quality_loss": 0.0},
        "int8": {"capacity_tokens_per_second": 70, "quality_loss": 0.01},  # no prefill: prompt + output already
    }}))  # fmt: skip
    bf16, int8 = load_profile(path)
    # 30 prompt + 15 output tokens hold the replica 15/50 + 30/500 = 0.36 s: 45 tokens / 0.36 s = 125 tok/s
    mixed = bf16.at_mix(30, 15)
    assert mixed.capacity_tokens_per_second == pytest.approx(125) and mixed.prefill_tokens_per_second is None
    assert mixed.at_mix(512, 128) == mixed  # converted once
    assert bf16.at_mix(2000, 10).capacity_tokens_per_second == pytest.approx(2010 / (10 / 50 + 2000 / 500))
    assert int8.at_mix(30, 15) == int8
    path.write_text(json.dumps({"tiers": {"bf16": {"capacity_tokens_per_second": 50, "quality_loss": 0,
                                                   "prefill_tokens_per_second": 0}}}))  # fmt: skip
    with pytest.raises(ProfileError, match="capacity and prefill > 0"):
        load_profile(path)


def test_the_runtime_s_measured_profile_loads_when_present() -> None:
    path = Path(__file__).resolve().parents[2] / "runtime" / "quant" / "profiles" / "smollm2-135m-cpu.json"
    if not path.exists():
        pytest.skip(f"{path.name} has not been measured in this checkout yet")
    opts = load_profile(path)
    assert "bf16" in {o.tier for o in opts} and all(o.capacity_tokens_per_second > 0 for o in opts)


# ---- a cost budget: the best quality it buys ---------------------------------------------------------------------

BUDGET_OPTIONS = [  # one GPU at $0.80/h: capacity costs $0.80e6 / (3600 x capacity x 0.7)
    TierOption("bf16", L4, 100, 0.0),  # $3.17/1M at capacity
    TierOption("int8", L4, 150, 0.005),  # $2.12
    TierOption("int4", L4, 250, 0.03),  # $1.27
]


def test_capacity_cost_is_the_price_of_one_replica_at_the_planned_utilization() -> None:
    costs = {c.option.tier: c for c in price_options(BUDGET_OPTIONS, 10, target_utilization=0.7)}
    assert costs["bf16"].capacity_cost_per_million_tokens == pytest.approx(0.8e6 / (3600 * 100 * 0.7))
    assert costs["int4"].capacity_cost_per_million_tokens == pytest.approx(0.8e6 / (3600 * 250 * 0.7))
    # at 10 tok/s each tier needs one replica: the fleet's cost per token is the same whatever the tier
    assert costs["bf16"].cost_per_million_tokens == pytest.approx(costs["int4"].cost_per_million_tokens)


def test_a_budget_buys_the_best_quality_that_fits_it() -> None:
    loose = choose_tier(BUDGET_OPTIONS, 10, 0.05, TierState(), now=0, max_cost_per_million_tokens=5.0)
    assert loose.tier == "bf16" and "within the $5/1M budget" in loose.reason
    mid = choose_tier(BUDGET_OPTIONS, 10, 0.05, TierState(), now=0, max_cost_per_million_tokens=2.5)
    assert mid.tier == "int8"
    # the quality limit still binds: int4 would fit a $1.5 budget but loses too much
    strict = choose_tier(BUDGET_OPTIONS, 10, 0.01, TierState(), now=0, max_cost_per_million_tokens=1.5)
    assert strict.tier == "int8" and "no tier fits it" in strict.reason


def test_over_budget_leaves_at_once_and_an_upgrade_waits_the_dwell() -> None:
    running_bf16 = TierState("bf16", L4)
    tighter = choose_tier(BUDGET_OPTIONS, 10, 0.05, running_bf16, now=0, dwell=600, max_cost_per_million_tokens=2.5)
    assert tighter.tier == "int8" and "over the $2.5/1M budget" in tighter.reason
    # the budget is raised again: bf16 fits, but moving back is a rollout, so it waits
    looser = choose_tier(BUDGET_OPTIONS, 10, 0.05, tighter.state, now=10, dwell=600, max_cost_per_million_tokens=5.0)
    assert looser.tier == "int8" and "for now" in looser.reason
    later = choose_tier(BUDGET_OPTIONS, 10, 0.05, looser.state, now=300, dwell=600, max_cost_per_million_tokens=5.0)
    assert later.tier == "int8"
    back = choose_tier(BUDGET_OPTIONS, 10, 0.05, later.state, now=620, dwell=600, max_cost_per_million_tokens=5.0)
    assert back.tier == "bf16" and "switch to bf16" in back.reason
    # the load swinging does not move a budget choice: capacity cost does not depend on it
    for load in (1, 50, 120, 3):
        d = choose_tier(BUDGET_OPTIONS, load, 0.05, back.state, now=700, dwell=600, max_cost_per_million_tokens=5.0)
        assert d.tier == "bf16" and d.state.challenger is None


def test_when_no_tier_fits_the_budget_the_cheapest_runs() -> None:
    d = choose_tier(BUDGET_OPTIONS, 10, 0.05, TierState("bf16", L4), now=0, max_cost_per_million_tokens=0.5)
    assert d.tier == "bf16" and "for now" in d.reason  # int4 is 60% cheaper, but not for long enough yet
    done = choose_tier(BUDGET_OPTIONS, 10, 0.05, d.state, now=700, max_cost_per_million_tokens=0.5)
    assert done.tier == "int4" and "no tier fits it" in done.reason
