"""Where the autoscaler plugs in: a timer on every InferenceDeployment with `scaling.enabled`.

The operator holds no scaling math. Each tick it turns the spec into the policy's `ScalingSpec`, asks an
observer for an `Observation` (latency quantiles, queue depth, tokens/s), calls `infleet.autoscaler.policy.decide`
and writes the decision to `spec.replicas` through the scale subresource, exactly as `kubectl scale` would; the
ordinary reconcile then rolls it out. The policy's conditions and the observed figures go into status.

The observer is pluggable (`set_observer`): the Prometheus adapter registers itself; with none, observations are
"missing", and the policy holds the current count (it never scales down without data).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

import kopf

from infleet.autoscaler import policy
from infleet.operator import api, resources, status
from infleet.operator.handlers import IDEP, kube_of
from infleet.operator.kube import KubeError

# (spec, status, name, namespace) -> what the fleet looks like now
Observer = Callable[[api.InferenceDeploymentSpec, dict[str, Any], str, str], Awaitable[policy.Observation]]
INTERVAL = 15.0
STATUS_MANAGER = "infleet-autoscaler"
# A gateway holding requests for a deployment at zero writes this (an RFC 3339 time) and renews it while it holds.
SCALE_FROM_ZERO_ANNOTATION = "infleet.dev/scale-from-zero-requested"
DEMAND_FRESH_SECONDS = 60.0

_observer: Observer | None = None
_history: dict[tuple[str, str], tuple[policy.Recommendation, ...]] = {}


def set_observer(observer: Observer | None) -> None:
    global _observer
    _observer = observer


def prometheus_observer(url: str) -> Observer:
    """Observations from Prometheus (the autoscaler's reader: infleet_* and vllm:* series alike)."""
    from infleet.autoscaler.prometheus import PrometheusReader

    reader = PrometheusReader(url)

    async def observe(spec: api.InferenceDeploymentSpec, st: dict[str, Any], name: str, namespace: str) -> Any:
        return await reader.observe_async(namespace, name, spec.replicas, st.get("readyReplicas"))

    return observe


def scaling_spec(spec: api.InferenceDeploymentSpec) -> policy.ScalingSpec:
    s = spec.scaling
    seconds = lambda d: api.parse_duration(d) if d else None  # noqa: E731
    return policy.ScalingSpec(
        min_replicas=s.min_replicas,
        max_replicas=max(s.max_replicas, 1),
        target_queue_per_replica=float(s.target_queue_depth),
        ttft_slo=seconds(spec.slo.ttft_p99),
        tpot_slo=seconds(spec.slo.tpot_p99),
        e2e_slo=seconds(spec.slo.e2e_p99),
        scale_up_window=api.parse_duration(s.scale_up_stabilization),
        scale_down_window=api.parse_duration(s.scale_down_stabilization),
    )


async def observe(
    spec: api.InferenceDeploymentSpec, st: dict[str, Any], name: str, namespace: str
) -> policy.Observation:
    base = policy.Observation(sampled_at=time.time(), replicas=spec.replicas, ready_replicas=st.get("readyReplicas"))
    if _observer is None:
        return replace(base, missing="no metrics source registered with the operator")
    return replace(await _observer(spec, st, name, namespace), replicas=spec.replicas)


def held_from_annotation(metadata: Mapping[str, Any], now: float) -> int:
    """1 while a gateway's scale-from-zero request is fresh, else 0 (the policy wakes a deployment at zero for it)."""
    stamp = (metadata.get("annotations") or {}).get(SCALE_FROM_ZERO_ANNOTATION)
    try:
        at = datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp() if stamp else None
    except ValueError:
        return 0
    return 1 if at is not None and now - at <= DEMAND_FRESH_SECONDS else 0


def status_from(decision: policy.Decision, obs: policy.Observation, generation: int | None) -> dict[str, Any]:
    conditions = [
        status.condition(c.type, {"True": True, "False": False}.get(c.status), c.reason, c.message, generation)
        for c in decision.conditions
    ]
    observed = {
        "ttftP99Seconds": obs.ttft_p99,
        "tpotP99Seconds": obs.tpot_p99,
        "e2eP99Seconds": obs.e2e_p99,
        "queueDepth": obs.queue_depth,
        "tokensPerSecond": obs.tokens_per_second,
    }
    return {"conditions": conditions, "observed": {k: v for k, v in observed.items() if v is not None}}


@kopf.timer(
    *IDEP, id="autoscale", interval=INTERVAL, when=lambda spec, **_: bool(spec.get("scaling", {}).get("enabled"))
)
async def autoscale(
    body: kopf.Body, spec: kopf.Spec, name: str, namespace: str | None, memo: Any, logger: kopf.Logger, **_: Any
) -> None:
    assert namespace is not None  # InferenceDeployments are namespaced
    parsed = api.InferenceDeploymentSpec.model_validate(dict(spec))
    st = dict(body.get("status") or {})
    obs = await observe(parsed, st, name, namespace)
    now = time.time()
    obs = replace(obs, held_requests=max(obs.held_requests, held_from_annotation(body["metadata"], now)))
    decision = policy.decide(scaling_spec(parsed), obs, _history.get((namespace, name), ()), now)
    _history[(namespace, name)] = decision.history
    extra = status_from(decision, obs, body["metadata"].get("generation"))
    slo = status.slo_condition(parsed, extra["observed"] or None, body["metadata"].get("generation"))
    merged = {
        c["type"]: c for c in status.merge_conditions(list(st.get("conditions") or []), [*extra["conditions"], slo])
    }
    patch_status: dict[str, Any] = {"conditions": [merged[c["type"]] for c in [*extra["conditions"], slo]]}
    if extra["observed"]:
        patch_status["observed"] = extra["observed"]
    kube = kube_of(memo)
    try:
        await kube.apply_status(namespace, name, patch_status, manager=STATUS_MANAGER)
        target = resources.desired_replicas(parsed.model_copy(update={"replicas": decision.replicas}))
        if target != parsed.replicas:
            logger.info(f"autoscaler: {parsed.replicas} -> {target} replicas ({decision.reason})")
            url = f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{namespace}/{api.PLURAL}/{name}/scale"
            await kube.request(
                "PATCH",
                url,
                kind=api.KIND,
                body={"spec": {"replicas": target}},
                content_type="application/merge-patch+json",
            )
    except KubeError as err:
        raise kopf.TemporaryError(f"autoscaler could not write its decision: {err}", delay=INTERVAL) from err
