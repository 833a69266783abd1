"""The scaling policy on hand-made observations."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infleet.autoscaler.policy import Observation, Recommendation, ScalingSpec, decide

SPEC = ScalingSpec(
    min_replicas=1,
    max_replicas=20,
    capacity_tokens_per_second=1000,
    target_utilization=0.5,
    target_queue_per_replica=4,
    ttft_slo=2.0,
    tpot_slo=0.1,
    scale_down_window=120,
    scale_down_period=0,  # step limits per decision, as the HPA's 15 s policies
    max_scale_up_percent=100,
    max_scale_down_pods=2,
    max_scale_down_percent=25,
    guard=1.0,
)


def obs(t: float = 100.0, replicas: int = 4, **kw: object) -> Observation:
    base: dict[str, object] = dict(
        sampled_at=t, replicas=replicas, ready_replicas=replicas, queue_depth=0, running=2, tokens_per_second=1500
    )
    base.update(kw)
    return Observation(**base)  # type: ignore[arg-type]


def test_steady_load_holds() -> None:
    d = decide(SPEC, obs(tokens_per_second=1900, ttft_p99=0.5, tpot_p99=0.03), (), now=100)
    assert d.replicas == 4
    assert d.reason.startswith("hold 4 -> 4")
    assert not d.held


def test_queue_scales_up_and_says_why() -> None:
    d = decide(SPEC, obs(queue_depth=40), (), now=100)
    assert d.replicas > 4
    assert "40 waiting" in d.reason and "scale up" in d.reason


def test_backlog_in_tokens_is_drained_not_rate_matched() -> None:
    # 24 waiting beyond the 16 allowed, 2000 tokens each, over 60 s = 800 tok/s: 2 more replicas at 500 tok/s
    d = decide(SPEC, obs(queue_depth=40, tokens_per_request=2000, tokens_per_second=1500), (), now=100)
    assert d.recommendation == 3 + 2


def test_p99_guard_scales_up_when_saturated() -> None:
    d = decide(SPEC, obs(tokens_per_second=1900, queue_depth=20, ttft_p99=3.0), (), now=100)
    assert d.replicas >= 6
    assert "TTFT p99" in d.reason


def test_p99_guard_waits_for_starting_replicas() -> None:
    d = decide(SPEC, obs(replicas=6, ready_replicas=4, tokens_per_second=1900, ttft_p99=3.0), (), now=100)
    assert d.replicas == 6
    assert "starting" in d.reason


def test_p99_violation_scales_up_even_without_load() -> None:
    d = decide(SPEC, obs(replicas=8, tokens_per_second=100, queue_depth=0, tpot_p99=0.15), (), now=100)
    assert d.replicas == 12  # 8 x 1.5, the TPOT p99 over its SLO
    assert "TPOT p99" in d.reason


def test_p99_guard_holds_while_new_replicas_show_up_in_the_window() -> None:
    history = (Recommendation(80, 8, ready=6),)  # 20 s ago only 6 were ready: the 30 s p99 window predates 2
    d = decide(SPEC, obs(replicas=8, tokens_per_second=100, tpot_p99=0.15), history, now=100)
    assert d.replicas == 8  # neither more (the p99 is stale) nor fewer (it is above the SLO)
    assert "became ready" in d.reason


def test_guard_fraction_acts_before_the_slo_is_reached() -> None:
    early = ScalingSpec(max_replicas=20, capacity_tokens_per_second=1000, ttft_slo=2.0, guard=0.8)
    d = decide(early, obs(tokens_per_second=1000, ttft_p99=1.8), (), now=100)
    assert d.replicas > 4 and "TTFT p99 1.8s > 1.6s" in d.reason
    assert decide(SPEC, obs(tokens_per_second=1000, ttft_p99=1.8), (), now=100).replicas == 4


def test_scale_down_rate_is_limited_per_period() -> None:
    spec = ScalingSpec(max_replicas=40, capacity_tokens_per_second=1000, scale_down_window=0,
                       scale_down_period=60, max_scale_down_pods=1, max_scale_down_percent=10)  # fmt: skip
    idle = dict(tokens_per_second=0, queue_depth=0, running=0)
    first = decide(spec, obs(t=100, replicas=30, **idle), (), now=100)
    assert first.replicas == 27  # 10% of 30
    again = decide(spec, obs(t=110, replicas=27, **idle), first.history, now=110)
    assert again.replicas == 27  # still within the period that started at 30
    later = decide(spec, obs(t=170, replicas=27, **idle), again.history, now=170)
    assert later.replicas == 27 - 2  # a new period: 10% of 27, rounded down


def test_scale_down_only_when_comfortably_inside_slo() -> None:
    history = (Recommendation(0, 1),)
    near = decide(SPEC, obs(t=200, replicas=8, tokens_per_second=100, ttft_p99=1.9), history, now=200)
    assert near.replicas == 8 and "not below" in near.reason
    comfy = decide(SPEC, obs(t=200, replicas=8, tokens_per_second=100, ttft_p99=0.5), history, now=200)
    assert comfy.replicas < 8


def test_no_scale_down_with_waiting_requests() -> None:
    d = decide(SPEC, obs(replicas=8, tokens_per_second=100, queue_depth=3, ttft_p99=0.2), (), now=100)
    assert d.replicas == 8 and "3 waiting" in d.reason


@pytest.mark.parametrize(
    "bad",
    [
        dict(missing="connection refused"),
        dict(t=0.0),  # sampled 100 s ago: stale
        dict(queue_depth=None, running=None, tokens_per_second=None),
    ],
)
def test_missing_or_stale_metrics_hold(bad: dict) -> None:
    d = decide(SPEC, obs(replicas=8, **{"tokens_per_second": 0, **bad}), (Recommendation(0, 1),), now=100)
    assert d.replicas == 8
    assert d.held
    (cond,) = d.conditions
    assert cond.type == "MetricsAvailable" and cond.status == "False"
    assert "hold at 8" in d.reason


def test_held_requests_bring_a_deployment_up_from_zero_even_without_metrics() -> None:
    spec = ScalingSpec(min_replicas=0, max_replicas=4)
    d = decide(spec, obs(replicas=0, ready_replicas=0, held_requests=3, missing="no series yet"), (), now=100)
    assert d.replicas == 1 and "scale from zero" in d.reason


def test_scale_from_zero_is_immediate_and_to_zero_waits_for_the_window() -> None:
    spec = ScalingSpec(min_replicas=0, max_replicas=4, scale_up_window=60, scale_down_window=60)
    up = decide(spec, obs(replicas=0, ready_replicas=0, queue_depth=0, running=0, tokens_per_second=0,
                          held_requests=9), (Recommendation(90, 0),), now=100)  # fmt: skip
    assert up.replicas == 3  # 9 held at 4 per replica, despite a recent recommendation of 0
    idle = dict(queue_depth=0, running=0, tokens_per_second=0)
    history: tuple[Recommendation, ...] = (Recommendation(50, 2),)
    early = decide(spec, obs(t=100, replicas=2, **idle), history, now=100)
    assert early.replicas == 2  # a 2 within the 60 s down window
    late = decide(spec, obs(t=200, replicas=2, **idle), early.history, now=200)
    assert late.replicas == 1  # one replica per minute by default
    last = decide(spec, obs(t=270, replicas=1, **idle), late.history, now=270)
    assert last.replicas == 0


def test_scale_down_stabilization_keeps_the_window_maximum() -> None:
    history = (Recommendation(10, 9), Recommendation(50, 6))
    d = decide(SPEC, obs(t=100, replicas=10, tokens_per_second=100, ttft_p99=0.1), history, now=100)
    assert d.recommendation == 1
    assert d.replicas == 9  # the highest recommendation of the last 120 s
    assert "stabilized to 9" in d.reason
    later = decide(SPEC, obs(t=200, replicas=9, tokens_per_second=100, ttft_p99=0.1), d.history, now=200)
    assert later.replicas == 7 and "step limited" in later.reason  # window passed: down by max(2, 25%)


def test_scale_up_stabilization_uses_the_window_minimum() -> None:
    spec = ScalingSpec(min_replicas=1, max_replicas=20, capacity_tokens_per_second=1000, scale_up_window=30)
    history = (Recommendation(80, 5),)
    d = decide(spec, obs(t=100, replicas=4, tokens_per_second=7000), history, now=100)
    assert d.recommendation == 10 and d.replicas == 5


def test_step_sizes_are_bounded() -> None:
    up = decide(SPEC, obs(replicas=2, tokens_per_second=50_000), (), now=100)
    assert up.replicas == 2 + 4 and "step limited" in up.reason
    down = decide(SPEC, obs(replicas=16, tokens_per_second=0, queue_depth=0, running=0), (), now=100)
    assert down.replicas == 16 - 4  # 25% of 16


def test_invalid_spec_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="maxReplicas"):
        ScalingSpec(min_replicas=5, max_replicas=2)
    with pytest.raises(ValueError, match="ttft_slo"):
        ScalingSpec(ttft_slo=0)


finite = st.floats(min_value=0, max_value=1e6, allow_nan=False)
maybe_p99 = st.none() | st.floats(min_value=0, max_value=100, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(
    lo=st.integers(0, 10),
    span=st.integers(0, 30),
    current=st.integers(0, 60),
    ready=st.integers(0, 60),
    queue=finite,
    running=finite,
    tokens=finite,
    ttft=maybe_p99,
    tpot=maybe_p99,
    held=st.integers(0, 100),
    missing=st.booleans(),
    history=st.lists(st.tuples(st.floats(0, 100), st.integers(0, 60)), max_size=8),
)
def test_invariants(
    lo: int,
    span: int,
    current: int,
    ready: int,
    queue: float,
    running: float,
    tokens: float,
    ttft: float | None,
    tpot: float | None,
    held: int,
    missing: bool,
    history: list[tuple[float, int]],
) -> None:
    spec = ScalingSpec(
        min_replicas=lo, max_replicas=max(lo, 1) + span, capacity_tokens_per_second=500, ttft_slo=2, tpot_slo=0.1
    )
    o = Observation(
        sampled_at=100,
        replicas=current,
        ready_replicas=min(ready, current),
        queue_depth=queue,
        running=running,
        tokens_per_second=tokens,
        ttft_p99=ttft,
        tpot_p99=tpot,
        held_requests=held,
        missing="down" if missing else None,
    )
    d = decide(spec, o, tuple(Recommendation(t, r) for t, r in sorted(history)), now=100)
    assert spec.min_replicas <= d.replicas <= spec.max_replicas
    assert d.reason
    bounded = min(max(current, spec.min_replicas), spec.max_replicas)
    if missing:  # missing data never scales below what the bounds force
        assert d.replicas >= bounded
    if d.replicas < bounded:  # any scale-down happens only with nothing waiting and p99s inside the SLO
        assert queue + held == 0
        assert ttft is None or ttft <= spec.comfort * 2
        assert tpot is None or tpot <= spec.comfort * 0.1


def test_arrivals_beyond_what_is_served_are_demand() -> None:
    # a saturated fleet serves 2000 tok/s (4 replicas at 500 each) while 8 requests/s of 500 tokens arrive: 4000
    saturated = obs(tokens_per_second=2000, tokens_per_request=500)
    assert decide(SPEC, saturated, (), now=100).recommendation == 4
    d = decide(SPEC, obs(tokens_per_second=2000, tokens_per_request=500, arrival_rate=8.0), (), now=100)
    assert d.recommendation == 8 and "4000 tok/s needs 8" in d.reason
    # fewer arrivals than served (a backlog being worked off) never lowers the estimate below what is served
    assert (
        decide(SPEC, obs(tokens_per_second=2000, tokens_per_request=500, arrival_rate=1.0), (), 100).recommendation == 4
    )
    # arrivals without a token mix to weigh them by leave the served tokens/s in charge
    assert decide(SPEC, obs(tokens_per_second=2000, arrival_rate=8.0), (), now=100).recommendation == 4
