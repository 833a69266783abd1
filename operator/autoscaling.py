"""Where the autoscaler plugs in: a timer on every InferenceDeployment with `scaling.enabled`.

The operator holds no scaling math. Each tick it turns the spec into the policy's `ScalingSpec`, asks an
observer for an `Observation` (latency quantiles, queue depth, tokens/s), calls `infleet.autoscaler.policy.decide`
and writes the decision to `spec.replicas` through the scale subresource, exactly as `kubectl scale` would; the
ordinary reconcile then rolls it out. The policy's conditions go into status, and so does every decision
(`status.desiredReplicas`, `status.desiredTier`, `status.scalingReason`). Under `spec.scaling.mode: advisory` that is
all it does: the decision is published (status, a `ScaleAdvised` / `TierAdvised` Event when the advice changes, the
desired-replicas and desired-tier gauges) and never applied.

The observer is pluggable (`OperatorState.observer`): the Prometheus adapter over the fleet reader's shared
sample, set from `--prometheus-url`; with none, observations are "missing", and the policy holds the current count
(it never scales down without data).

Under `spec.quantization.tier: auto` the same tick asks the tier chooser (`infleet.autoscaler.tiers`) for the tier,
from the deployment's tier profile (`infleet.autoscaler.profiles`), the observed load, `maxQualityLoss`, the cost
budget and the GPU price. A new tier is written to `status.tier` with its reason, announced by a `TierChanged` event,
and rolled out by the ordinary reconcile (`handlers.roll_out_tier`): the reconcile runs the tier that status names,
so an automatic tier change is the same surge rollout as a spec change. The chooser's hysteresis state lives in
the operator's state (`state.py`).

The observation loop (`observation.py`) writes the observed figures, cost and SLOMet of every deployment, scaled or
not; this timer only consumes the same observations. `status.costPerMillionTokens` is the cost model over what was
observed: the GPU's hourly price (`spec.cost`
override, else the chart's table in `INFLEET_GPU_PRICES`, else the defaults), GPUs per replica, the replicas that
exist and the tokens/s served. Unknown (no throughput, no price) leaves it out of status.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

import kopf

from infleet.api import durations
from infleet.api.conditions import now_iso
from infleet.autoscaler import cost, policy, profiles, tiers
from infleet.operator import api, checks, resources, status
from infleet.operator.handlers import IDEP, GpuNodes, GroupSets, roll_out_tier
from infleet.operator.kube import KubeError
from infleet.operator.kube import path as kube_path
from infleet.operator.state import OperatorState

if TYPE_CHECKING:
    from infleet.operator.observation import FleetReader

# (spec, status, name, namespace) -> what the fleet looks like now
Observer = Callable[[api.InferenceDeploymentSpec, dict[str, Any], str, str], Awaitable[policy.Observation]]
INTERVAL = 15.0
STATUS_MANAGER = "infleet-autoscaler"
# A gateway holding requests for a deployment at zero writes this (an RFC 3339 time) and renews it while it holds.
SCALE_FROM_ZERO_ANNOTATION = "infleet.dev/scale-from-zero-requested"
DEMAND_FRESH_SECONDS = 60.0

# the chart hands the operator its GPU price table as JSON (USD per GPU-hour by nvidia.com/gpu.product)
PRICES_ENV = "INFLEET_GPU_PRICES"
TIER_DWELL = 600.0  # seconds a better tier must stay better before the chooser moves to it (a rollout each time)


def price_table(environ: Mapping[str, str] = os.environ) -> dict[str, float]:
    """The defaults with the chart's table on top; a table that does not parse is reported and ignored."""
    raw = environ.get(PRICES_ENV)
    if not raw:
        return cost.price_table()
    try:
        table = json.loads(raw)
        if not isinstance(table, dict):
            raise ValueError("not a JSON object")
        return cost.price_table({str(k): float(v) for k, v in table.items()})
    except (ValueError, TypeError) as err:
        logging.getLogger(__name__).warning(f"{PRICES_ENV} is not a price table ({err}); using the default prices")
        return cost.price_table()


@functools.cache
def configured_prices() -> dict[str, float]:
    """The operator's price table, read once: the environment does not change while it runs, and a bad table is
    reported once, not on every tick of every deployment."""
    return price_table()


def prices_for(spec: api.InferenceDeploymentSpec, table: Mapping[str, float]) -> dict[str, float]:
    """The price table with this deployment's own GPU price (spec.cost.gpuHourlyPrice) for its accelerator."""
    out = dict(table)
    if spec.cost.gpu_hourly_price is not None:
        out[spec.accelerator.type] = spec.cost.gpu_hourly_price
    return out


def observed_cost(
    spec: api.InferenceDeploymentSpec, replicas: int, tokens_per_second: float | None, prices: Mapping[str, float]
) -> float | None:
    """$ per 1M tokens the fleet costs at the observed throughput; None when it cannot be known or is infinite."""
    price = prices.get(spec.accelerator.type)
    if price is None or tokens_per_second is None:
        return None
    value = cost.cost_per_million_tokens(price, spec.gpus_per_replica, replicas, tokens_per_second)
    return readable(value) if math.isfinite(value) else None


def readable(value: float) -> float:
    """Four significant digits: `kubectl get idep` prints status numbers as they are stored."""
    return float(f"{value:.4g}")


def choose_tier(
    spec: api.InferenceDeploymentSpec,
    current: str | None,
    obs: policy.Observation,
    state: tiers.TierState,
    now: float,
    prices: Mapping[str, float],
    replica_device: str | None = None,
    running: str | None = None,
) -> tuple[tiers.TierDecision, str] | None:
    """The chooser's decision (tier and GPU product) for an `auto` deployment, and where its profiles came from;
    None if not auto. The options are every allowed tier on every product of `accelerator.allowed` (the running
    product alone when it is empty) that runs there, fits its memory and has a price, each priced at the recent
    token mix (a prompt-heavy mix favours the tier that prefills fastest). `replica_device` names the
    device whose measured profile describes the replicas (None: each product itself); `running`: the product the
    replicas run on now (None: accelerator.type)."""
    q = spec.quantization
    if q.tier != "auto":
        return None
    gpu = running or spec.accelerator.type
    if state.tier != current or state.gpu != gpu:  # someone else moved the tier or product: start from what runs
        state = tiers.TierState(current, gpu)
    slo = spec.slo
    options: list[tiers.TierOption] = []
    sources: list[str] = []
    for product in spec.accelerator.products():
        on = spec.on(product)
        runnable = [t for t in q.allowed if checks.tier_problem(on, t) is None]
        choice = profiles.tier_options(
            spec.model.uri,
            product,
            runnable,
            spec.gpus_per_replica,
            replica_device,
            durations.seconds_or_none(slo.tpot_p99),
            durations.seconds_or_none(slo.ttft_p99),
            mix=token_mix(obs),
        )
        if product not in prices and choice.options:
            sources.append(f"{product}: no GPU price (set the chart's gpuPrices), not offered")
            continue
        options += choice.options
        sources.append(choice.source)
    source = "; ".join(sources)
    if not options and gpu not in prices:
        reason = f"no GPU price for {gpu} (set spec.cost.gpuHourlyPrice or the chart's gpuPrices): keep {current}"
        return tiers.TierDecision(current, gpu, 0, reason, state), source
    decision = tiers.choose_tier(
        options,
        obs.tokens_per_second or 0.0,
        q.max_quality_loss,
        state,
        now,
        max_replicas=spec.scaling.max_replicas,
        dwell=TIER_DWELL,
        prices=prices,
        max_cost_per_million_tokens=spec.cost.max_per_million_tokens,
    )
    return decision, source


async def post_event(kube: Any, body: Mapping[str, Any], reason: str, message: str) -> None:
    """A Normal event on the InferenceDeployment (`kubectl describe idep` shows it), written at once and awaited, so
    it is there by the time the change it announces is; a refused event is logged, never fatal to the decision."""
    meta = body["metadata"]
    now = now_iso()
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "reason": reason,
        "message": message[:1024],
        "type": "Normal",
        "source": {"component": STATUS_MANAGER},
        "reportingComponent": STATUS_MANAGER,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    try:
        await kube.request("POST", kube_path("Event", meta["namespace"]), kind="Event", body=event)
    except KubeError as err:
        logging.getLogger(__name__).warning(f"could not post the {reason} event: {err}")


async def advise(
    kube: Any,
    body: kopf.Body,
    st: Mapping[str, Any],
    replicas: int,
    target: int,
    current_tier: str | None,
    new_tier: str | None,
    decision: policy.Decision,
    patch_status: Mapping[str, Any],
    running: str | None = None,
    new_product: str | None = None,
) -> None:
    """Advisory mode: announce a decision that differs from what runs, once per change of advice; apply nothing."""
    if target != replicas and target != st.get("desiredReplicas"):
        await post_event(
            kube, body, "ScaleAdvised", f"{replicas} -> {target} replicas (not applied): {decision.reason}"
        )
    if new_product is not None and new_product != st.get("desiredAccelerator"):
        reason = patch_status.get("tierReason", "")
        await post_event(kube, body, "AcceleratorAdvised", f"{running} -> {new_product} (not applied): {reason}")
    if new_tier is not None and new_tier != st.get("desiredTier"):
        reason = patch_status.get("tierReason", "")
        await post_event(kube, body, "TierAdvised", f"{current_tier or 'none'} -> {new_tier} (not applied): {reason}")


def prometheus_observer(reader: FleetReader) -> Observer:
    """Observations from Prometheus through the operator's fleet reader: the autoscaler consumes the same
    once-per-interval sample the observation loop writes to every deployment's status."""

    async def observe(spec: api.InferenceDeploymentSpec, st: dict[str, Any], name: str, namespace: str) -> Any:
        return await reader.observe(namespace, name, spec.replicas, st.get("readyReplicas"))

    return observe


def replica_capacity(
    spec: api.InferenceDeploymentSpec,
    tier: str,
    product: str,
    obs: policy.Observation,
    replica_device: str | None = None,
) -> float | None:
    """One replica's tokens/s at the SLO for the recent token mix, from the tier profile (`profiles.replica_capacity`);
    None when no profile knows the model (the policy then scales on requests in flight and waiting)."""
    slo = spec.slo
    return profiles.replica_capacity(
        spec.model.uri,
        product,
        tier,
        spec.gpus_per_replica,
        replica_device,
        durations.seconds_or_none(slo.tpot_p99),
        durations.seconds_or_none(slo.ttft_p99),
        token_mix(obs),
    )


def with_last_mix(
    obs: policy.Observation, mixes: dict[tuple[str, str], tuple[float, float]], key: tuple[str, str]
) -> policy.Observation:
    """The observation with the last token mix seen while no request comes: an idle deployment keeps the capacity
    and tier prices of its own traffic instead of falling back to the reference mix (and flipping its tier)."""
    prompt, output = obs.prompt_tokens_per_request, obs.output_tokens_per_request
    if prompt and output:
        mixes[key] = (prompt, output)
        return obs
    if key not in mixes:
        return obs
    prompt, output = mixes[key]
    return replace(obs, prompt_tokens_per_request=prompt, output_tokens_per_request=output)


def token_mix(obs: policy.Observation) -> tuple[float, float] | None:
    """The recent mean prompt and output tokens per request to two significant digits (within ~5%: profiles are
    cached by mix); None before any request."""
    prompt, output = obs.prompt_tokens_per_request, obs.output_tokens_per_request
    return (float(f"{prompt:.2g}"), float(f"{output:.2g}")) if prompt and output else None


def scaling_spec(spec: api.InferenceDeploymentSpec, capacity: float | None = None) -> policy.ScalingSpec:
    """The policy's spec: the CRD's scaling block and SLO, with one replica's `capacity` (tokens/s at the SLO)."""
    s = spec.scaling
    seconds = durations.seconds_or_none
    return policy.ScalingSpec(
        min_replicas=s.min_replicas,
        max_replicas=max(s.max_replicas, 1),
        capacity_tokens_per_second=capacity,
        target_utilization=s.target_utilization,
        forecast_lead=durations.seconds(s.forecast_lead),
        objective=spec.slo.objective_percent / 100,
        target_queue_per_replica=float(s.target_queue_depth),
        ttft_slo=seconds(spec.slo.ttft_p99),
        tpot_slo=seconds(spec.slo.tpot_p99),
        e2e_slo=seconds(spec.slo.e2e_p99),
        scale_up_window=durations.seconds(s.scale_up_stabilization),
        scale_down_window=durations.seconds(s.scale_down_stabilization),
    )


async def observe(
    observer: Observer | None, spec: api.InferenceDeploymentSpec, st: dict[str, Any], name: str, namespace: str
) -> policy.Observation:
    base = policy.Observation(sampled_at=time.time(), replicas=spec.replicas, ready_replicas=st.get("readyReplicas"))
    if observer is None:
        return replace(base, missing="no metrics source registered with the operator")
    return replace(await observer(spec, st, name, namespace), replicas=spec.replicas)


def held_from_annotation(metadata: Mapping[str, Any], now: float) -> int:
    """1 while a gateway's scale-from-zero request is fresh, else 0 (the policy wakes a deployment at zero for it)."""
    stamp = (metadata.get("annotations") or {}).get(SCALE_FROM_ZERO_ANNOTATION)
    try:
        at = datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp() if stamp else None
    except ValueError:
        return 0
    return 1 if at is not None and now - at <= DEMAND_FRESH_SECONDS else 0


def status_from(decision: policy.Decision, obs: policy.Observation, generation: int | None) -> dict[str, Any]:
    conditions = [c.model_copy(update={"observed_generation": generation}).wire() for c in decision.conditions]
    observed = {
        "ttftP99Seconds": obs.ttft_p99,
        "tpotP99Seconds": obs.tpot_p99,
        "e2eP99Seconds": obs.e2e_p99,
        "queueDepth": obs.queue_depth,
        "tokensPerSecond": obs.tokens_per_second,
    }
    return {"conditions": conditions, "observed": {k: readable(v) for k, v in observed.items() if v is not None}}


@kopf.timer(  # type: ignore[arg-type]  # indexes: typed keyword arguments
    *IDEP, id="autoscale", interval=INTERVAL, when=lambda spec, **_: bool(spec.get("scaling", {}).get("enabled"))
)
async def autoscale(
    body: kopf.Body,
    spec: kopf.Spec,
    name: str,
    namespace: str | None,
    memo: OperatorState,
    logger: kopf.Logger,
    gpu_nodes: GpuNodes,
    group_sets: GroupSets,
    **_: Any,
) -> None:
    assert namespace is not None  # InferenceDeployments are namespaced
    key = (namespace, name)
    parsed = api.InferenceDeploymentSpec.model_validate(dict(spec))
    st = dict(body.get("status") or {})
    generation = body["metadata"].get("generation")
    obs = await observe(memo.observer, parsed, st, name, namespace)
    now = time.time()
    obs = replace(obs, held_requests=max(obs.held_requests, held_from_annotation(body["metadata"], now)))
    obs = with_last_mix(obs, memo.mixes, key)
    current_tier = st.get("tier")
    running = checks.running_product(parsed, st.get("accelerator"))
    capacity = replica_capacity(parsed, current_tier or parsed.tier, running, obs, memo.replica_device)
    decision = policy.decide(scaling_spec(parsed, capacity), obs, memo.history.get(key, ()), now)
    memo.history[key] = decision.history
    extra = status_from(decision, obs, generation)
    # observed figures, cost and SLOMet are the observation loop's (operator/observation.py), for every deployment
    merged = {c["type"]: c for c in status.merge_conditions(list(st.get("conditions") or []), extra["conditions"])}
    patch_status: dict[str, Any] = {"conditions": [merged[c["type"]] for c in extra["conditions"]]}
    prices = prices_for(parsed, configured_prices())

    advisory = parsed.scaling.mode == "advisory"
    tier_state = memo.tier_states.get(key, tiers.TierState())
    chosen = choose_tier(parsed, current_tier, obs, tier_state, now, prices, memo.replica_device, running)
    new_tier: str | None = None
    new_product: str | None = None
    if chosen is not None:
        tier_decision, source = chosen
        memo.tier_states[key] = tier_decision.state
        patch_status["tierReason"] = f"{tier_decision.reason} [{source}]"
        if tier_decision.tier is not None and tier_decision.tier != current_tier:
            new_tier = tier_decision.tier
        if tier_decision.gpu is not None and tier_decision.gpu != running:
            new_product = tier_decision.gpu
        patch_status["desiredTier"] = new_tier or current_tier
        # always sent while auto: this manager keeps owning the field between writers (advisory: the tier that runs)
        patch_status["tier"] = (current_tier or parsed.tier) if advisory else (new_tier or current_tier)
        if parsed.accelerator.allowed:  # the product is chosen with the tier, for the same reason
            patch_status["desiredAccelerator"] = new_product or running
            patch_status["accelerator"] = running if advisory else (new_product or running)
            if new_product is not None and not advisory:
                patch_status["acceleratorReason"] = f"chosen by the autoscaler: {patch_status['tierReason']}"
    target = resources.desired_replicas(parsed.model_copy(update={"replicas": decision.replicas}))
    patch_status["desiredReplicas"] = target
    patch_status["scalingReason"] = decision.reason
    kube = memo.client()
    try:
        patch = api.InferenceDeploymentStatus.patch(patch_status)
        written = await kube.apply_status(namespace, name, patch, STATUS_MANAGER)
        if advisory:
            await advise(
                kube,
                body,
                st,
                parsed.replicas,
                target,
                current_tier,
                new_tier,
                decision,
                patch_status,
                running,
                new_product,
            )
            return
        if new_product is not None and written is not None:
            message = f"{running} -> {new_product}: {patch_status['tierReason']}"
            logger.info(f"autoscaler: accelerator {message}")
            await post_event(kube, body, "AcceleratorChanged", message)
        if new_tier is not None and written is not None:
            message = f"{current_tier or 'none'} -> {new_tier}: {patch_status['tierReason']}"
            logger.info(f"autoscaler: tier {message}")
            await post_event(kube, body, "TierChanged", message)
        if (new_tier is not None or new_product is not None) and written is not None:
            await roll_out_tier(written, memo, gpu_nodes, group_sets, logger)
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
            verb = "ScaledUp" if target > parsed.replicas else "ScaledDown"
            message = f"{parsed.replicas} -> {target} replicas: {decision.reason}"
            await post_event(kube, body, verb, message)
    except KubeError as err:
        raise kopf.TemporaryError(f"autoscaler could not write its decision: {err}", delay=INTERVAL) from err
