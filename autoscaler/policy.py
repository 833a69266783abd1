"""infleet's scaling policy: desired replicas from queue depth, throughput and the p99 SLO, with a reason.

Pure functions over small frozen dataclasses, so the operator's timer, the fleet simulator and the tests all call
the same `decide(spec, observation, history, now)`. The shape follows the Kubernetes HPA: a raw recommendation per
sync, a short history of recommendations, separate scale-up and scale-down stabilization windows (up takes the
lowest recommendation of its window, down the highest of its), and bounded steps. What LLM serving adds:

- demand is measured in tokens/s against a per-replica capacity at the SLO (from the tier profile): the larger of
  the tokens served and the requests arriving at the gateway times the recent tokens per request (served tokens
  stop growing at the fleet's throughput just when it falls behind); waiting requests add replicas on top, so a
  backlog is cleared rather than merely not grown;
- a p99 guard: TTFT or TPOT p99 above the SLO scales up even when the load estimate says otherwise, and the fleet
  scales down only when every p99 is comfortably inside its SLO and nothing is waiting; while TTFT attainment over
  minutes meets the SLO's objective, one short window's TTFT p99 (a burst's tail) neither adds nor holds replicas;
- missing or stale metrics never scale down: the decision holds and says why in a condition;
- minReplicas 0: an idle deployment goes to zero after the scale-down window, and any demand (including requests a
  gateway holds for a deployment at zero) brings it back at once;
- an SLO that replicas cannot buy: when more than 1% of recent prompts are too long to prefill within the TTFT
  SLO at this tier (the tier profile says how long is too long), or attainment did not rise when the fleet doubled,
  the p99 guard stops adding replicas and an `SLOAttainable=False` condition says what is achievable, which share
  of the load cannot be met and why, and what would help (`saturation`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from itertools import pairwise

from infleet.api.conditions import Condition

ARRIVAL_WINDOW = 15.0  # seconds of the gateway's received requests behind `arrival_rate` (three 5 s scrapes)
ATTAINMENT_WINDOW = 300.0  # seconds behind `ttft_attainment`: long enough for a share of requests to mean something


@dataclass(frozen=True)
class Observation:
    """What the fleet looked like at `sampled_at` (seconds). `None` means "no data" for that series.

    A p99 is `None` when no request finished in the window (no traffic), which is not an error; `missing` carries
    the error when the metrics could not be read at all (Prometheus down, series absent).
    """

    sampled_at: float
    replicas: int  # the current desired count (spec.replicas)
    ready_replicas: int | None = None
    queue_depth: float | None = None  # requests waiting in the replicas' schedulers
    running: float | None = None  # requests in the replicas' running batches
    tokens_per_second: float | None = None  # prompt + generated tokens served per second over the window
    ttft_p99: float | None = None
    tpot_p99: float | None = None
    e2e_p99: float | None = None
    tokens_per_request: float | None = None  # mean prompt + output tokens of recent requests
    held_requests: int = 0  # requests a gateway holds because no replica is ready (scale from zero)
    missing: str | None = None
    ttft_attainment: float | None = None  # share of first tokens in the window within the TTFT SLO
    # recent prompt lengths as a cumulative histogram, (upper edge in tokens, count): vLLM's request_prompt_tokens
    prompt_histogram: tuple[tuple[float, float], ...] = ()
    # requests/s arriving at the gateway over the window: with tokens_per_request, the demand in tokens/s, which the
    # tokens/s served understates once the replicas are saturated (the excess waits instead of being served)
    arrival_rate: float | None = None
    # the recent token mix (mean prompt and output tokens of finished requests): a replica's capacity depends on it
    prompt_tokens_per_request: float | None = None
    output_tokens_per_request: float | None = None


@dataclass(frozen=True)
class ScalingSpec:
    """The deployment's scaling targets. Latency SLOs are in seconds and optional."""

    min_replicas: int = 1
    max_replicas: int = 10
    capacity_tokens_per_second: float | None = None  # one replica at the SLO (tier profile); None: queue only
    target_utilization: float = 0.7  # fraction of that capacity to plan for
    target_queue_per_replica: float = 4.0  # waiting requests one replica may carry before another is added
    backlog_drain_seconds: float = 60.0  # clear a backlog beyond that over this long (needs tokens/request)
    ttft_slo: float | None = None
    tpot_slo: float | None = None
    e2e_slo: float | None = None
    guard: float = 0.8  # scale up while any p99 is above guard x SLO (a p99 at the SLO is already too late)
    comfort: float = 0.7  # scale down only while every p99 is below comfort x SLO
    scale_up_window: float = 0.0  # seconds; HPA's default
    scale_down_window: float = 600.0  # a cold start costs tens of seconds: keep capacity through lulls
    max_scale_up_pods: int = 4  # per decision: up by at most max(pods, percent of current)
    max_scale_up_percent: float = 25.0  # small steps, often: a cold start hides how much the last one helped
    max_scale_down_pods: int = 1  # per scale-down period: down by at most max(pods, percent of the period's top)
    max_scale_down_percent: float = 10.0
    scale_down_period: float = 60.0  # seconds; 0 applies the limit per decision
    stale_after: float = 60.0  # seconds; older observations count as missing
    p99_window: float = 30.0  # the rate window behind the p99s: growth within it has not shown in them yet
    # Saturation: stop the p99 guard buying replicas that did not raise attainment (see `saturation`)
    saturation: bool = True
    saturation_window: float = 600.0  # how far back a smaller fleet's attainment is remembered
    # the longest prompt whose prefill alone, on an idle replica, meets the TTFT SLO at this tier and parallelism
    # (from the tier profile); None: unknown, and the condition cannot say which share is out of reach
    max_prompt_within_ttft: int | None = None
    # Forecast: size for the tokens/s Holt's linear trend (exponential smoothing of the recommendation history's
    # tokens/s) predicts this many seconds ahead; set it to the cold start so replicas are ready when the load is
    # (pre-scaling). 0: off, size for the load now.
    forecast_lead: float = 0.0
    # Little's law on TTFT: a replica may carry as many waiting requests as it starts within the TTFT SLO
    # (ttft_slo x its request rate at capacity) instead of target_queue_per_replica. Needs a capacity, a TTFT SLO
    # and the recent tokens per request; otherwise target_queue_per_replica holds.
    queue_from_slo: bool = False
    # the SLO's objective (share of requests within it, e.g. 0.99): while TTFT attainment over the attainment window
    # meets it, a short window's TTFT p99 above the guard buys no replica (p99 of a 30 s window is stricter than 99%
    # of requests: one burst's tail). None: every window's p99 counts
    objective: float | None = None
    # demand includes the gateway's arrivals (x recent tokens per request), not only the tokens/s served
    arrivals: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.min_replicas < 0:
            problems.append("minReplicas must be >= 0")
        if self.max_replicas < max(self.min_replicas, 1):
            problems.append("maxReplicas must be >= max(minReplicas, 1)")
        if self.capacity_tokens_per_second is not None and self.capacity_tokens_per_second <= 0:
            problems.append("capacity tokens/s must be > 0")
        if not 0 < self.target_utilization <= 1:
            problems.append("target utilization must be in (0, 1]")
        if self.target_queue_per_replica <= 0:
            problems.append("target queue per replica must be > 0")
        if self.backlog_drain_seconds <= 0:
            problems.append("backlog drain time must be > 0 seconds")
        for name in ("ttft_slo", "tpot_slo", "e2e_slo"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                problems.append(f"{name} must be > 0 seconds")
        if not 0 < self.comfort <= self.guard:
            problems.append("comfort must be in (0, guard]")
        if min(self.scale_up_window, self.scale_down_window, self.stale_after, self.scale_down_period) < 0:
            problems.append("windows must be >= 0 seconds")
        if self.max_scale_up_pods < 1 or self.max_scale_down_pods < 1:
            problems.append("step sizes must be >= 1 pod")
        if problems:
            raise ValueError("invalid scaling spec: " + "; ".join(problems))


@dataclass(frozen=True)
class Recommendation:
    at: float
    replicas: int
    ready: int | None = None  # ready replicas when it was made: tells the p99 guard about recent growth
    current: int | None = None  # the replica count it was made at: the scale-down rate limit's reference
    attainment: float | None = None  # the TTFT attainment observed then: did growing since help?
    tokens: float | None = None  # the tokens/s observed then: the forecast's series


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str
    recommendation: int  # before stabilization and step limits
    history: tuple[Recommendation, ...] = ()  # store it and pass it to the next call
    conditions: tuple[Condition, ...] = field(default_factory=tuple)

    @property
    def held(self) -> bool:
        return any(c.type == "MetricsAvailable" and not c.is_true for c in self.conditions)


def decide(spec: ScalingSpec, observation: Observation, history: tuple[Recommendation, ...], now: float) -> Decision:
    """The replica count to apply now, why, and the history to keep for the next call."""
    current = observation.replicas
    problem = _metrics_problem(spec, observation, now)
    if problem is not None:
        return _hold(spec, observation, history, now, problem)

    saturated = saturation(spec, observation, history)
    raw, why, floor = recommend(spec, observation, history, saturated)
    keep_for = max(
        spec.scale_up_window, spec.scale_down_window, spec.p99_window, spec.scale_down_period, spec.saturation_window
    )
    kept = tuple(r for r in history if now - r.at <= keep_for)
    kept += (
        Recommendation(
            now,
            raw,
            observation.ready_replicas,
            current,
            observation.ttft_attainment,
            demand_tokens_per_second(observation, spec.arrivals),
        ),
    )
    stabilized = raw if current == 0 else _stabilize(spec, current, raw, kept, now)
    stabilized = max(stabilized, floor)  # a veto on scaling down holds the fleet, but is not a recommendation
    period_start = max(
        [r.current for r in kept if r.current is not None and now - r.at <= spec.scale_down_period] + [current]
    )
    limited = _limit_step(spec, current, stabilized, period_start)
    replicas = _clamp(limited, spec)

    verb = "hold" if replicas == current else "scale up" if replicas > current else "scale down"
    notes = [why]
    if stabilized != raw and stabilized != floor:
        window = spec.scale_up_window if raw > current else spec.scale_down_window
        notes.append(f"stabilized to {stabilized} over {window:g}s")
    if limited != stabilized:
        notes.append(f"step limited to {limited}")
    if replicas != limited:
        notes.append(f"bounded to [{spec.min_replicas}, {spec.max_replicas}]")
    reason = f"{verb} {current} -> {replicas}: " + "; ".join(notes)
    ok = Condition.of("MetricsAvailable", True, "MetricsRead", f"metrics read at t={observation.sampled_at:.0f}s")
    attainable = (
        saturated.condition()
        if saturated is not None
        else Condition.of("SLOAttainable", True, "ReplicasHelp", "no sign that more replicas stop raising attainment")
    )
    return Decision(replicas, reason, raw, kept, (ok, attainable))


def recommend(
    spec: ScalingSpec,
    obs: Observation,
    history: tuple[Recommendation, ...] = (),
    saturated: Saturation | None = None,
) -> tuple[int, str, int]:
    """The replica count the current load asks for, the reason, and a floor: the current count when scaling down
    is vetoed (p99 not comfortably inside the SLO, requests waiting), else 0. The floor stays out of the
    recommendation history, so a veto does not restart the scale-down window. Under `saturated` the p99s neither
    add replicas nor veto a scale-down: replicas did not move them."""
    current = obs.replicas
    queue = obs.queue_depth or 0.0
    running = obs.running or 0.0
    tokens = demand_tokens_per_second(obs, spec.arrivals)
    demand = queue + running + obs.held_requests + tokens

    if current == 0:
        if demand > 0:
            start = max(1, math.ceil((queue + obs.held_requests) / spec.target_queue_per_replica))
            return start, f"scale from zero: {queue + obs.held_requests:g} requests waiting or held", 0
        return 0, "idle at zero", 0

    parts: list[str] = []
    if spec.capacity_tokens_per_second is not None:
        per_replica = spec.capacity_tokens_per_second * spec.target_utilization
        ahead = forecast(history, obs.sampled_at, tokens, spec.forecast_lead) if spec.forecast_lead > 0 else None
        if ahead is not None and ahead > tokens:
            parts.append(f"{tokens:.0f} tok/s now, {ahead:.0f} forecast {spec.forecast_lead:g}s ahead")
            tokens_for = ahead
        else:
            tokens_for = tokens
        load_replicas = math.ceil(tokens_for / per_replica - 1e-9)
        parts.append(f"{tokens_for:.0f} tok/s needs {load_replicas} at {per_replica:.0f} tok/s each")
    else:  # without a capacity, in-flight requests are the load
        load_replicas = math.ceil((running + queue) / (2 * spec.target_queue_per_replica) - 1e-9)
        parts.append(f"{running + queue:g} in flight needs {load_replicas}")
    backlog = queue + obs.held_requests
    ready = obs.ready_replicas if obs.ready_replicas is not None else current
    allowed = queue_target(spec, obs) * max(ready, 1)
    excess = max(0.0, backlog - allowed)
    if excess and spec.capacity_tokens_per_second is not None and obs.tokens_per_request:
        # a backlog is work to finish once, not a rate: replicas enough to drain it over the drain time
        drain_rate = excess * obs.tokens_per_request / spec.backlog_drain_seconds
        queue_extra = math.ceil(drain_rate / (spec.capacity_tokens_per_second * spec.target_utilization) - 1e-9)
        how = f"drained over {spec.backlog_drain_seconds:g}s"
    else:
        queue_extra = math.ceil(excess / queue_target(spec, obs) - 1e-9)
        how = f"target {queue_target(spec, obs):.3g}/replica"
    if backlog > 0:
        parts.append(f"{backlog:g} waiting ({how}) adds {queue_extra}")
    desired = max(load_replicas, 1 if demand > 0 else 0) + queue_extra

    violated = _violations(spec, obs, spec.guard)
    if violated and saturated is not None:
        parts.append(f"p99 above {spec.guard:.0%} of SLO, but {saturated.evidence}: the p99 guard adds none")
        return desired, "; ".join(parts), 0
    starting = current - obs.ready_replicas if obs.ready_replicas is not None else 0
    grown = obs.ready_replicas is not None and any(
        r.ready is not None and r.ready < obs.ready_replicas and obs.sampled_at - r.at <= spec.p99_window
        for r in history
    )
    names = f"above {spec.guard:.0%} of SLO: " + ", ".join(name for name, _ in violated)
    floor = 0
    if violated and starting > 0:  # the window's p99 lags: let the replicas already asked for arrive first
        floor = current
        parts.append(f"p99 {names}; {starting} replicas starting")
    elif violated and grown:  # replicas became ready within the p99 window: it still shows the time before
        floor = current
        parts.append(f"p99 {names}; but replicas became ready within the last {spec.p99_window:g}s")
    elif violated:
        worst = max(ratio for _, ratio in violated)
        desired = max(desired, current + 1, math.ceil(current * min(worst / spec.guard, 2.0)))
        parts.append(f"p99 {names}")
    elif desired < current:
        uncomfortable = _violations(spec, obs, spec.comfort)
        if backlog > 0 or uncomfortable:
            parts.append(
                "no scale-down: "
                + (f"{backlog:g} waiting" if backlog > 0 else "")
                + (", " if backlog > 0 and uncomfortable else "")
                + ", ".join(f"{name} not below {spec.comfort:.0%} of SLO" for name, _ in uncomfortable)
            )
            floor = current
    return desired, "; ".join(parts), floor


def demand_tokens_per_second(obs: Observation, arrivals: bool = True) -> float:
    """Tokens/s asked of the fleet: the larger of what it served and what arrived (arrivals x recent tokens per
    request); served alone caps demand at the fleet's throughput just when it falls behind."""
    served = obs.tokens_per_second or 0.0
    if not arrivals or obs.arrival_rate is None or not obs.tokens_per_request:
        return served
    return max(served, obs.arrival_rate * obs.tokens_per_request)


HOLT_ALPHA, HOLT_BETA = 0.5, 0.3  # level and trend smoothing of the forecast (ticks of about 10-15 s)


def forecast(history: tuple[Recommendation, ...], now: float, tokens: float, lead: float) -> float | None:
    """Tokens/s `lead` seconds ahead by Holt's linear trend over the history's tokens/s and the value now (no
    seasonality: the history covers minutes). None with fewer than three points."""
    series = [(r.at, r.tokens) for r in history if r.tokens is not None and r.at < now] + [(now, tokens)]
    if len(series) < 3:
        return None
    level, trend = series[0][1], 0.0
    for (t0, _), (t1, value) in pairwise(series):
        step = max(t1 - t0, 1e-9)
        previous = level
        level = HOLT_ALPHA * value + (1 - HOLT_ALPHA) * (level + trend * step)
        trend = HOLT_BETA * (level - previous) / step + (1 - HOLT_BETA) * trend
    return max(0.0, level + trend * lead)


def queue_target(spec: ScalingSpec, obs: Observation) -> float:
    """Waiting requests one replica may carry: from the TTFT SLO by Little's law when switched on and known."""
    if (
        spec.queue_from_slo
        and spec.capacity_tokens_per_second is not None
        and spec.ttft_slo is not None
        and obs.tokens_per_request
    ):
        rate = spec.capacity_tokens_per_second * spec.target_utilization / obs.tokens_per_request  # requests/s
        return max(1.0, spec.ttft_slo * rate)
    return spec.target_queue_per_replica


ATTAINMENT_GAIN = 0.01  # growing the fleet must raise TTFT attainment by at least one point to count as helping
MIN_SAMPLES = 3  # observations of the smaller fleet needed before its attainment is compared
P99_SHARE = 0.01  # a p99 leaves out 1% of requests: more unmeetable than that and the p99 cannot meet its SLO
SHARE_MARGIN = 0.05  # the unmeetable share is read from histogram buckets: this much below its complement is a miss


@dataclass(frozen=True)
class Saturation:
    """Attainment that replicas cannot raise: what is achievable, what cannot be met and why."""

    attainment: float | None  # the TTFT attainment observed now: about what is achievable
    evidence: str  # why more replicas would not help
    ttft_slo: float | None
    unmeetable_share: float | None  # recent requests whose prompt alone is too long to prefill within the SLO
    max_prompt: int | None

    def condition(self) -> Condition:
        why = (
            f"about {self.unmeetable_share:.0%} of recent requests have prompts over {self.max_prompt:,} tokens,"
            f" whose prefill alone takes longer than the {self.ttft_slo:g}s TTFT SLO at this tier and parallelism:"
            " they miss it at any replica count"
            if self.unmeetable_share is not None and self.max_prompt is not None and self.ttft_slo is not None
            else "the misses do not come from a lack of replicas (no prompt-length profile to say which requests)"
        )
        achievable = f"about {self.attainment:.1%}" if self.attainment is not None else "unknown yet"
        message = (
            f"{self.evidence}, so no replicas are bought for the TTFT p99. Achievable attainment {achievable}; {why}."
            " What would help: higher tensor parallelism or a faster tier (shorter prefill), a larger chunked-prefill"
            " budget, or a TTFT SLO of their own for long prompts."
        )
        return Condition.of("SLOAttainable", False, "SLOUnmeetable", message)


def saturation(spec: ScalingSpec, obs: Observation, history: tuple[Recommendation, ...]) -> Saturation | None:
    """Attainment that replicas cannot raise, by either of two signs. From the tier profile: more than the p99's
    1% of recent prompts are longer than `max_prompt_within_ttft`, so the TTFT p99 stays above the SLO at any
    replica count, while the requests that can meet it do (attainment within SHARE_MARGIN of the meetable share;
    below that, replicas still help the rest). From the record: fleets of at most half the size, seen long enough
    ago that their windows are their own, reached on average at least the mean attainment (within ATTAINMENT_GAIN)
    of the current size. None when switched off or when neither sign shows. Either way a backlog beyond the queue
    target is a lack of replicas, never saturation."""
    if not spec.saturation:
        return None
    ready = obs.ready_replicas
    if (obs.queue_depth or 0) + obs.held_requests > spec.target_queue_per_replica * max(ready or 0, 1):
        return None  # a backlog beyond the queue target is a lack of replicas
    share = None
    if spec.max_prompt_within_ttft is not None and obs.prompt_histogram:
        share = share_above(obs.prompt_histogram, spec.max_prompt_within_ttft)
    reachable = 1 - share - SHARE_MARGIN if share is not None else 1.0
    if share is not None and share > P99_SHARE and (obs.ttft_attainment or 0.0) >= reachable:
        evidence = (
            f"{share:.1%} of recent prompts are longer than the {spec.max_prompt_within_ttft:,} tokens that can"
            " prefill within the TTFT SLO, more than the 1% a p99 can leave out"
        )
        return Saturation(obs.ttft_attainment, evidence, spec.ttft_slo, share, spec.max_prompt_within_ttft)
    now_attainment = obs.ttft_attainment
    if now_attainment is None or ready is None or ready < 2:
        return None
    earlier = [
        r
        for r in history
        if r.attainment is not None
        and r.ready is not None
        and 0 < r.ready <= ready // 2
        and spec.p99_window <= obs.sampled_at - r.at <= spec.saturation_window
    ]
    at_ready = [r.attainment for r in history if r.ready == ready and r.attainment is not None] + [now_attainment]
    before = [r.attainment for r in earlier if r.attainment is not None]
    if len(before) < MIN_SAMPLES:
        return None
    now_mean, before_mean = sum(at_ready) / len(at_ready), sum(before) / len(before)
    if now_mean >= before_mean + ATTAINMENT_GAIN:
        return None
    fewest = min(r.ready for r in earlier if r.ready is not None)
    evidence = (
        f"TTFT attainment {now_mean:.1%} at {ready} ready replicas is no higher than the {before_mean:.1%} of"
        f" {fewest} to {ready // 2}"
    )
    return Saturation(now_mean, evidence, spec.ttft_slo, share, spec.max_prompt_within_ttft)


def share_above(histogram: tuple[tuple[float, float], ...], limit: float) -> float | None:
    """The share of a cumulative histogram's observations above `limit`, linear within a bucket."""
    total = histogram[-1][1] if histogram else 0.0
    if total <= 0:
        return None
    below, low_edge, low_count = 0.0, 0.0, 0.0
    for edge, count in histogram:
        if edge >= limit:
            width = edge - low_edge
            below = low_count + (count - low_count) * ((limit - low_edge) / width if width > 0 else 1.0)
            break
        low_edge, low_count = edge, count
    else:
        below = total
    return max(0.0, 1 - below / total)


def _violations(spec: ScalingSpec, obs: Observation, fraction: float) -> list[tuple[str, float]]:
    """(name, p99/SLO) for each p99 above `fraction` of its SLO."""
    out = []
    for name, p99, slo in (
        ("TTFT p99", obs.ttft_p99, spec.ttft_slo),
        ("TPOT p99", obs.tpot_p99, spec.tpot_slo),
        ("e2e p99", obs.e2e_p99, spec.e2e_slo),
    ):
        if name == "TTFT p99" and within_objective(spec, obs):
            continue  # a burst's tail in one short window, while the error budget holds: not worth a replica
        if p99 is not None and slo is not None and math.isfinite(p99) and p99 > fraction * slo:
            out.append((f"{name} {p99:.3g}s > {fraction * slo:.3g}s", p99 / slo))
    return out


def within_objective(spec: ScalingSpec, obs: Observation) -> bool:
    """TTFT attainment over the attainment window meets the SLO's objective (e.g. 99% of first tokens in time)."""
    return spec.objective is not None and obs.ttft_attainment is not None and obs.ttft_attainment >= spec.objective


def _metrics_problem(spec: ScalingSpec, obs: Observation, now: float) -> str | None:
    if obs.missing:
        return f"metrics missing: {obs.missing}"
    if now - obs.sampled_at > spec.stale_after:
        return f"metrics stale: sampled {now - obs.sampled_at:.0f}s ago (limit {spec.stale_after:g}s)"
    if obs.queue_depth is None and obs.tokens_per_second is None and obs.running is None:
        return "metrics missing: no queue, running or throughput series"
    return None


def _hold(
    spec: ScalingSpec, obs: Observation, history: tuple[Recommendation, ...], now: float, problem: str
) -> Decision:
    """Never scale down on missing data; only the spec's bounds and a gateway's held requests still act."""
    current = obs.replicas
    replicas = _clamp(current, spec)  # bounds are the user's decision, not the metrics'
    note = f"hold at {replicas}"
    if current == 0 and obs.held_requests > 0:
        replicas = max(replicas, 1)
        note = f"scale from zero for {obs.held_requests} held requests"
    elif replicas != current:
        note = f"bounded {current} -> {replicas} by [{spec.min_replicas}, {spec.max_replicas}]"
    condition = Condition.of("MetricsAvailable", False, "MetricsUnavailable", problem)
    return Decision(replicas, f"{note}: {problem}", current, history, (condition,))


def _stabilize(spec: ScalingSpec, current: int, raw: int, history: tuple[Recommendation, ...], now: float) -> int:
    """HPA's rule: up to the lowest recommendation of the up window, down to the highest of the down window."""
    if raw > current:
        window = [r.replicas for r in history if now - r.at <= spec.scale_up_window]
        return max(current, min(window))
    if raw < current:
        window = [r.replicas for r in history if now - r.at <= spec.scale_down_window]
        return min(current, max(window))
    return raw


def _limit_step(spec: ScalingSpec, current: int, desired: int, period_start: int) -> int:
    """Up: at most max(pods, percent) per decision. Down: at most max(pods, percent) below the highest count of
    the scale-down period (the HPA's `periodSeconds` policies)."""
    if desired > current:
        step = max(spec.max_scale_up_pods, math.ceil(current * spec.max_scale_up_percent / 100))
        return min(desired, current + step)
    if desired < current:
        step = max(spec.max_scale_down_pods, math.floor(period_start * spec.max_scale_down_percent / 100))
        return min(current, max(desired, period_start - step))
    return desired


def _clamp(replicas: int, spec: ScalingSpec) -> int:
    return min(max(replicas, spec.min_replicas), spec.max_replicas)


def with_replicas(observation: Observation, replicas: int) -> Observation:
    """A copy of an observation with another current replica count (handy in tests and the simulator)."""
    return replace(observation, replicas=replicas)
