"""The observation loop's judgement: SLOMet from exact attainment against each deployment's own objective (else
the p99s), with a reason naming the SLI missed; status fields for deployments whether scaled or not."""

from __future__ import annotations

from typing import Any

from infleet.operator import api, observation
from infleet.operator.observation import Snapshot

from .specs import good_spec

KEY = ("ml", "chat")
E2E = api.SLO.model_fields["e2e_p99"].alias or "e2eP99"  # the spec's spelling of the end-to-end target


def spec_of(**overrides: Any) -> api.InferenceDeploymentSpec:
    return api.InferenceDeploymentSpec.model_validate(good_spec(**overrides))


def snap(**values: float) -> Snapshot:
    return Snapshot(sampled_at=100.0, values={KEY: dict(values)})


def judge(spec: api.InferenceDeploymentSpec, s: Snapshot) -> dict[str, Any]:
    obs = observation.observation_from(s, *KEY, replicas=1)
    return observation.slo_condition(spec, obs, observation.attainment_from(s, *KEY), 3)


def test_a_tpot_target_tighter_than_reached_is_false_naming_tpot() -> None:
    spec = spec_of(slo={"ttftP99": "2s", "tpotP99": "5ms", "objectivePercent": 99})
    cond = judge(spec, snap(ttft_p99=0.4, tpot_p99=0.03, ttft_good=100, tpot_good=2, tpot_bad=98))
    assert (cond["type"], cond["status"], cond["reason"]) == ("SLOMet", "False", "TPOTMissed")
    assert cond["message"].startswith("TPOT: 2% of requests within 5ms (objective 99%), p99 0.03s")
    assert cond["observedGeneration"] == 3


def test_the_same_counts_meet_a_looser_objective() -> None:
    counts = {"ttft_good": 97.0, "ttft_bad": 3.0}
    strict = judge(spec_of(slo={"ttftP99": "1s", "objectivePercent": 99}), snap(**counts))
    loose = judge(spec_of(slo={"ttftP99": "1s", "objectivePercent": 95}), snap(**counts))
    assert (strict["status"], strict["reason"]) == ("False", "TTFTMissed")
    assert (loose["status"], loose["reason"]) == ("True", "TargetsMet")


def test_without_gateway_counts_the_p99s_decide() -> None:
    spec = spec_of(slo={"ttftP99": "500ms", E2E: "10s"})
    missed = judge(spec, snap(ttft_p99=0.2, e2e_p99=12.0, queue_depth=0.0))
    assert (missed["status"], missed["reason"]) == ("False", "E2EMissed")
    assert "end-to-end p99 12s > 10s" in missed["message"]
    assert judge(spec, snap(ttft_p99=0.2, e2e_p99=3.0))["status"] == "True"


def test_no_traffic_no_targets_and_no_prometheus_are_unknown_with_a_reason() -> None:
    spec = spec_of(slo={"ttftP99": "1s"})
    idle = judge(spec, snap(queue_depth=0.0, running=0.0))
    assert (idle["status"], idle["reason"]) == ("Unknown", "NoObservations")
    down = judge(spec, Snapshot(sampled_at=1.0, error="Prometheus at http://x failed: ConnectError"))
    assert down["reason"] == "NoObservations" and "ConnectError" in down["message"]
    assert judge(spec_of(), snap(ttft_p99=9.0))["reason"] == "NoTargets"


def test_status_of_an_unscaled_deployment_has_figures_attainment_and_cost() -> None:
    spec = spec_of(
        slo={"ttftP99": "1s", "tpotP99": "50ms"},
        cost={"gpuHourlyPrice": 3.6},
        scaling={"enabled": False},
        replicas=2,
    )
    s = snap(
        ttft_p99=0.5, tpot_p99=0.08, queue_depth=1.0, prompt_tokens_per_second=150.0,
        generation_tokens_per_second=50.0, ttft_good=10, tpot_good=5, tpot_bad=5,
    )  # fmt: skip
    obs = observation.observation_from(s, *KEY, replicas=2)
    out = observation.observed_status(spec, {"replicas": 2}, obs, observation.attainment_from(s, *KEY), 1)
    assert out["observed"] == {
        "ttftP99Seconds": 0.5, "tpotP99Seconds": 0.08, "queueDepth": 1.0, "tokensPerSecond": 200.0,
        "attainmentPercent": {"ttft": 100.0, "tpot": 50.0}, "window": observation.WINDOW,
    }  # fmt: skip
    # $3.60 per GPU-hour x 1 GPU x 2 replicas / (200 tokens/s x 3600 s) x 1e6 = $10 per 1M tokens
    assert out["costPerMillionTokens"] == 10.0
    assert out["conditions"][0]["reason"] == "TPOTMissed"
    # the status model (the CRD's schema) holds exactly what the loop writes, every field under the same name
    spelled = api.Observed.model_validate(out["observed"]).model_dump(by_alias=True, exclude_none=True)
    assert spelled == out["observed"]
    every = {"ttft": 1.0, "tpot": 2.0, "e2e": 3.0}
    assert api.Attainment.model_validate(every).model_dump(by_alias=True) == every


def test_the_policy_sees_arrivals_attainment_and_the_token_mix() -> None:
    """What the autoscaler sizes by besides the p99s: requests arriving at the gateway, the share of first tokens
    within the TTFT SLO, and the mean prompt and output of finished requests (a replica's capacity depends on it)."""
    s = snap(
        arrivals_per_second=6.0,
        ttft_attainment=0.97,
        prompt_tokens_per_second=1000.0,
        generation_tokens_per_second=200.0,
        requests_per_second=2.0,
    )
    obs = observation.observation_from(s, *KEY, replicas=2)
    assert (obs.arrival_rate, obs.ttft_attainment) == (6.0, 0.97)
    assert (obs.prompt_tokens_per_request, obs.output_tokens_per_request, obs.tokens_per_request) == (500, 100, 600)
    quiet = observation.observation_from(snap(queue_depth=0.0), *KEY, replicas=1)
    assert quiet.arrival_rate is None and quiet.prompt_tokens_per_request is None


def test_one_query_tags_every_quantity() -> None:
    query = observation.fleet_query()
    for name in observation.quantities():
        assert "label_replace(" in query and f'"quantity", "{name}"' in query
    assert query.count("label_replace(") == len(observation.quantities())
    parsed = observation.parse(
        [
            {"metric": {"namespace": "a", "deployment": "x", "quantity": "ttft_p99"}, "value": [1, "0.5"]},
            {"metric": {"namespace": "a", "deployment": "x", "quantity": "tpot_p99"}, "value": [1, "NaN"]},
            {"metric": {"namespace": "b", "deployment": "y", "quantity": "queue_depth"}, "value": [1, "3"]},
        ]
    )
    assert parsed == {("a", "x"): {"ttft_p99": 0.5}, ("b", "y"): {"queue_depth": 3.0}}
