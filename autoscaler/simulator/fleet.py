"""A discrete-event fleet: a gateway, continuous-batching replicas, cold starts, and a control loop.

Replicas run vLLM-style steps with chunked prefill: every step decodes one token for each running sequence and
spends the rest of a token budget on prompt chunks, first come first served, admitting a request only while its
KV (prompt + output) fits. The gateway routes each arrival to the ready replica with the fewest outstanding
requests and holds arrivals while no replica is ready (scale from zero). A new replica serves after a cold start;
a removed one stops taking requests and is billed until its in-flight requests finish (graceful termination).

The control loop calls a policy every `interval` seconds with what Prometheus would show: p99 TTFT/TPOT over a
window, queue depth, running requests, tokens/s, GPU busy fraction, average concurrency (for Knative's KPA), and the
recent token mix. A policy sees these observations and nothing else: `Fleet.run` refuses a policy that holds the trace
or any of its requests, and an observation has no trace to read (docs/autoscaler-evaluation.md, section 3).
Everything is deterministic: the only randomness is a seeded jitter on cold starts.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from bisect import bisect_left
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from infleet.autoscaler.latency_model import LatencyModel
from infleet.autoscaler.policy import ARRIVAL_WINDOW, ATTAINMENT_WINDOW
from infleet.autoscaler.simulator.trace import TraceRequest


@dataclass(frozen=True)
class FleetObservation:
    """One control-loop sample. Latency quantiles are None when nothing finished in the window."""

    now: float
    replicas: int  # desired: starting + ready
    ready: int
    queue_depth: int  # waiting in replica schedulers (not yet prefilling)
    held: int  # held at the gateway: no replica ready
    running: int
    tokens_per_second: float
    tokens_per_request: float | None  # mean prompt + output tokens of requests finished in the rate window
    ttft_p99: float | None
    tpot_p99: float | None
    utilization: float  # mean busy fraction of ready replicas over the rate window
    concurrency_stable: float  # average in-flight requests over the last 60 s (KPA's stable window)
    concurrency_panic: float  # ... over the last 6 s (KPA's panic window)
    # mean prompt and output tokens of the requests finished over the mix window (vLLM's request_prompt_tokens and
    # request_generation_tokens histograms): the token mix a controller can know; None when none finished
    prompt_tokens_per_request: float | None = None
    output_tokens_per_request: float | None = None
    ttft_attainment: float | None = None  # share of the window's first tokens within the TTFT SLO (a bucket ratio)
    # the mix window's prompt lengths, cumulative by PROMPT_BUCKETS: (edge, count), as vLLM's histogram shows them
    prompt_histogram: tuple[tuple[float, float], ...] = ()
    # requests that arrived at the gateway per second over the arrival window (its received-requests counter):
    # demand, which the tokens/s served stops showing once the fleet is saturated
    arrivals_per_second: float = 0.0

    def __getattr__(self, name: str) -> object:  # only reached for names the observation does not have
        raise CausalityError(
            f"FleetObservation has no {name!r}: a policy sees windowed metrics of the past only, never the trace"
        )


# vLLM's request_prompt_tokens buckets (1-2-5 steps) up to the longest context the simulator serves
PROMPT_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)


class CausalityError(AttributeError):
    """A policy reached for something a controller could not know at that moment: the trace."""


class Policy(Protocol):
    name: str
    interval: float

    def desired(self, obs: FleetObservation) -> int: ...


@dataclass
class SimConfig:
    ttft_slo: float = 2.0
    tpot_slo: float = 0.1
    objective: float = 0.99  # the SLO's objective: the share of requests to serve within it
    cold_start: float = 30.0  # seconds from scale-up to a ready replica
    cold_start_jitter: float = 0.2  # +- fraction, seeded
    max_batch_tokens: int = 512
    max_num_seqs: int = 256
    max_model_len: int = 32768
    initial_replicas: int = 1
    quantile_window: float = 30.0  # the p99s' rate window (infleet's policy reads `[30s]` histograms)
    rate_window: float = 30.0
    arrival_window: float = ARRIVAL_WINDOW  # the gateway's received-requests rate: short, so a surge shows soon
    attainment_window: float = ATTAINMENT_WINDOW  # the TTFT attainment's window
    mix_window: float = 300.0  # the token mix's window: long enough to average a mix, short enough to follow a shift
    hold_timeout: float = 300.0  # a request held at the gateway longer than this fails
    drain_limit: float = 3600.0  # after the last arrival, give up on requests still unfinished
    seed: int = 0
    # Replay the trace's last `warmup` seconds before it, unmeasured, so every policy meets the trace's start with
    # the fleet its own control loop built (not an arbitrary initial size); GPU time counts from the trace's start.
    warmup: float = 0.0


@dataclass
class Request:
    id: int
    arrival: float
    prompt: int
    output: int
    replica: int = -1
    prefilled: int = 0
    first_token: float = math.nan
    finish: float = math.nan
    failed: str | None = None

    @property
    def tpot(self) -> float:
        return (self.finish - self.first_token) / (self.output - 1) if self.output > 1 else 0.0


@dataclass
class Replica:
    id: int
    started: float
    ready_at: float
    state: str = "starting"  # starting | ready | draining | stopped
    stopped: float = math.nan
    waiting: deque[Request] = field(default_factory=deque)
    prefilling: deque[Request] = field(default_factory=deque)
    decoding: list[tuple[int, int, Request]] = field(default_factory=list)  # heap of (last step, id, request)
    steps: int = 0
    context: int = 0  # KV tokens of the decoding sequences
    kv_reserved: int = 0
    busy: bool = False

    @property
    def outstanding(self) -> int:
        return len(self.waiting) + len(self.prefilling) + len(self.decoding)


@dataclass
class Timeline:
    """Per control tick: what the plots show."""

    time: list[float] = field(default_factory=list)
    replicas: list[int] = field(default_factory=list)
    ready: list[int] = field(default_factory=list)
    ttft_p99: list[float] = field(default_factory=list)
    tpot_p99: list[float] = field(default_factory=list)
    queue: list[int] = field(default_factory=list)


@dataclass
class SimResult:
    policy: str
    requests: list[Request]
    gpu_seconds: float
    tokens: int
    scale_events: int
    timeline: Timeline
    end: float
    warmup_requests: int = 0  # the first this many requests are warm-up: replayed, not measured
    warmup: float = 0.0

    @property
    def measured(self) -> list[Request]:
        return self.requests[self.warmup_requests :]

    @property
    def failed(self) -> int:
        return sum(1 for r in self.measured if r.failed)

    @property
    def served_tokens(self) -> int:
        """Prompt + output tokens of the completed requests: what the $/1M tokens divides by."""
        return sum(r.prompt + r.output for r in self.measured if not r.failed)

    def slo_attainment(self, ttft_slo: float, tpot_slo: float) -> float:
        measured = self.measured
        ok = sum(1 for r in measured if not r.failed and r.first_token - r.arrival <= ttft_slo and r.tpot <= tpot_slo)
        return ok / len(measured) if measured else 1.0


class Fleet:
    def __init__(self, model: LatencyModel, config: SimConfig, policy: Policy) -> None:
        self.model = model
        self.config = config
        self.policy = policy
        self.rng = random.Random(config.seed)
        self.now = 0.0
        self.events: list[tuple[float, int, str, object]] = []
        self.seq = itertools.count()
        self.replicas: list[Replica] = []
        self.held: deque[Request] = deque()
        self.kv_capacity = model.kv_capacity_tokens
        # series for the observations (append-only, in time order)
        self.ttft_times: list[float] = []
        self.ttft_values: list[float] = []
        self.tpot_times: list[float] = []
        self.tpot_values: list[float] = []
        self.token_times: list[float] = []
        self.token_cum: list[float] = [0.0]
        self.done_times: list[float] = []
        self.done_cum: list[float] = [0.0]
        self.done_prompt_cum: list[float] = [0.0]
        self.done_output_cum: list[float] = [0.0]
        self.done_prompts: list[int] = []
        self.arrival_times: list[float] = []
        self.busy_times: list[float] = []
        self.busy_cum: list[float] = [0.0]
        self.concurrency: deque[tuple[float, int]] = deque()
        self.tokens = 0
        self.scale_events = 0
        self.timeline = Timeline()

    # --- event plumbing -----------------------------------------------------------------------------------
    def _at(self, when: float, kind: str, payload: object = None) -> None:
        heapq.heappush(self.events, (when, next(self.seq), kind, payload))

    def run(self, trace: Sequence[TraceRequest], before: Sequence[TraceRequest] | None = None) -> SimResult:
        """Replay `trace`. The warm-up replays the `warmup` seconds of traffic that came `before` it (arrivals in
        seconds before the trace's start, negative), or, with no `before`, the trace's own last `warmup` seconds."""
        refuse_trace_holders(self.policy, trace)
        w = self.config.warmup
        if before is not None:
            lead = [r for r in before if -w <= r.arrival < 0] if w > 0 else []
            shifted = [(r.arrival + w, r) for r in lead]
        else:
            span = trace[-1].arrival if trace else 0.0
            lead = [r for r in trace if r.arrival >= span - w] if w > 0 else []
            shifted = [(r.arrival - (span - w), r) for r in lead]
        replay = shifted + [(r.arrival + w, r) for r in trace]
        requests = [Request(i, t, r.prompt_tokens, r.output_tokens) for i, (t, r) in enumerate(replay)]
        for r in requests:
            self._at(r.arrival, "arrive", r)
        for _ in range(self.config.initial_replicas):
            self._add_replica(ready_now=True)
        self._at(0.0, "control")
        self._at(0.0, "sample")
        last_arrival = requests[-1].arrival if requests else 0.0
        pending = len(requests)
        while self.events:
            when, _, kind, payload = heapq.heappop(self.events)
            if when > last_arrival + self.config.drain_limit:
                break
            self.now = when
            if kind == "arrive":
                assert isinstance(payload, Request)
                pending -= self._arrive(payload)
            elif kind == "step":
                assert isinstance(payload, tuple)
                pending -= self._step_done(*payload)
            elif kind == "ready":
                assert isinstance(payload, Replica)
                self._ready(payload)
            elif kind == "control":
                self._control()
                if pending > 0 or self.now <= last_arrival:
                    self._at(self.now + self.policy.interval, "control")
            elif kind == "sample":
                self.concurrency.append((self.now, self._in_flight()))
                while self.concurrency and self.concurrency[0][0] < self.now - 60:
                    self.concurrency.popleft()
                if pending > 0 or self.now <= last_arrival:
                    self._at(self.now + 1.0, "sample")
            pending -= self._expire_held()
            if pending == 0 and self.now >= last_arrival:
                break
        end = self.now
        for r in requests:
            if not r.failed and math.isnan(r.finish):
                r.failed = "unfinished when the simulation stopped"
        gpu_seconds = 0.0
        for rep in self.replicas:
            stop = rep.stopped if not math.isnan(rep.stopped) else end
            gpu_seconds += max(0.0, stop - max(rep.started, w)) * self.model.gpus
        return SimResult(
            self.policy.name, requests, gpu_seconds, self.tokens, self.scale_events, self.timeline, end, len(lead), w
        )

    # --- gateway ------------------------------------------------------------------------------------------
    def _arrive(self, r: Request) -> int:
        """Route an arrival; returns 1 if it fails at once (too long to ever fit a replica)."""
        self.arrival_times.append(self.now)
        if r.prompt + r.output > min(self.kv_capacity, self.config.max_model_len):
            r.failed = f"{r.prompt + r.output} tokens exceed the replica's KV capacity or max model length"
            r.finish = self.now
            return 1
        self._route(r)
        return 0

    def _route(self, r: Request) -> None:
        ready = [rep for rep in self.replicas if rep.state == "ready"]
        if not ready:
            self.held.append(r)
            return
        rep = min(ready, key=lambda x: (x.outstanding, x.id))
        r.replica = rep.id
        rep.waiting.append(r)
        self._kick(rep)

    def _expire_held(self) -> int:
        failed = 0
        while self.held and self.now - self.held[0].arrival > self.config.hold_timeout:
            r = self.held.popleft()
            r.failed = f"held at the gateway for more than {self.config.hold_timeout:g}s"
            r.finish = self.now
            failed += 1
        return failed

    # --- replicas -----------------------------------------------------------------------------------------
    def _add_replica(self, ready_now: bool = False) -> None:
        jitter = 1 + self.config.cold_start_jitter * (2 * self.rng.random() - 1)
        delay = 0.0 if ready_now else self.config.cold_start * jitter
        rep = Replica(len(self.replicas), self.now, self.now + delay)
        self.replicas.append(rep)
        if ready_now:
            rep.state = "ready"
        else:
            self._at(rep.ready_at, "ready", rep)

    def _ready(self, rep: Replica) -> None:
        if rep.state != "starting":
            return
        rep.state = "ready"
        held, self.held = self.held, deque()
        for r in held:
            self._route(r)

    def _kick(self, rep: Replica) -> None:
        """Start a step if the replica is idle and has work."""
        if rep.busy or rep.outstanding == 0:
            return
        cfg = self.config
        decode = len(rep.decoding)
        budget = cfg.max_batch_tokens - decode
        chunks: list[tuple[Request, int]] = []
        context = rep.context
        for r in rep.prefilling:  # prompts already started go first
            if budget <= 0:
                break
            take = min(r.prompt - r.prefilled, budget)
            chunks.append((r, take))
            budget -= take
            context += r.prefilled + take
        while budget > 0 and rep.waiting and len(rep.prefilling) + decode < cfg.max_num_seqs:
            r = rep.waiting[0]
            if rep.kv_reserved + r.prompt + r.output > self.kv_capacity:
                break
            rep.waiting.popleft()
            rep.kv_reserved += r.prompt + r.output
            rep.prefilling.append(r)
            take = min(r.prompt, budget)
            chunks.append((r, take))
            budget -= take
            context += take
        if not chunks and decode == 0:
            return
        new_tokens = sum(take for _, take in chunks)
        duration = self.model.step_time(new_tokens, decode, context)
        rep.busy = True
        self._at(self.now + duration, "step", (rep, chunks, new_tokens + decode, duration))

    def _step_done(self, rep: Replica, chunks: list[tuple[Request, int]], tokens: int, duration: float) -> int:
        """Finish a step; returns how many requests completed."""
        rep.busy = False
        rep.steps += 1
        rep.context += len(rep.decoding)
        finished = 0
        while rep.decoding and rep.decoding[0][0] <= rep.steps:
            _, _, r = heapq.heappop(rep.decoding)
            finished += self._finish(rep, r)
        for r, take in chunks:
            r.prefilled += take
            if r.prefilled < r.prompt:
                continue
            rep.prefilling.remove(r)
            r.first_token = self.now
            self.ttft_times.append(self.now)
            self.ttft_values.append(self.now - r.arrival)
            if r.output == 1:
                finished += self._finish(rep, r)
            else:
                rep.context += r.prompt + 1
                heapq.heappush(rep.decoding, (rep.steps + r.output - 1, r.id, r))
        self.tokens += tokens
        self.token_times.append(self.now)
        self.token_cum.append(self.token_cum[-1] + tokens)
        self.busy_times.append(self.now)
        self.busy_cum.append(self.busy_cum[-1] + duration)
        self._kick(rep)
        if rep.state == "draining" and rep.outstanding == 0:
            rep.state = "stopped"
            rep.stopped = self.now
        return finished

    def _finish(self, rep: Replica, r: Request) -> int:
        r.finish = self.now
        self.done_times.append(self.now)
        self.done_cum.append(self.done_cum[-1] + r.prompt + r.output)
        self.done_prompt_cum.append(self.done_prompt_cum[-1] + r.prompt)
        self.done_output_cum.append(self.done_output_cum[-1] + r.output)
        self.done_prompts.append(r.prompt)
        rep.kv_reserved -= r.prompt + r.output
        if r.output > 1:
            rep.context -= r.prompt + r.output
            self.tpot_times.append(self.now)
            self.tpot_values.append(r.tpot)
        return 1

    # --- control loop -------------------------------------------------------------------------------------
    def _in_flight(self) -> int:
        return len(self.held) + sum(rep.outstanding for rep in self.replicas if rep.state != "stopped")

    def observe(self) -> FleetObservation:
        cfg = self.config
        active = [rep for rep in self.replicas if rep.state in ("starting", "ready")]
        ready = [rep for rep in active if rep.state == "ready"]
        serving = [rep for rep in self.replicas if rep.state in ("ready", "draining")]
        queue = sum(len(rep.waiting) for rep in serving)
        running = sum(len(rep.prefilling) + len(rep.decoding) for rep in serving)
        rate = _windowed_sum(self.token_times, self.token_cum, self.now - cfg.rate_window) / cfg.rate_window
        since = self.now - cfg.rate_window
        done = len(self.done_times) - bisect_left(self.done_times, since)
        per_request = _windowed_sum(self.done_times, self.done_cum, since) / done if done else None
        busy = _windowed_sum(self.busy_times, self.busy_cum, self.now - cfg.rate_window)
        util = min(1.0, busy / (cfg.rate_window * len(ready))) if ready else 0.0
        mix_since = self.now - cfg.mix_window
        mixed = len(self.done_times) - bisect_left(self.done_times, mix_since)
        prompt = _windowed_sum(self.done_times, self.done_prompt_cum, mix_since) / mixed if mixed else None
        output = _windowed_sum(self.done_times, self.done_output_cum, mix_since) / mixed if mixed else None
        first = bisect_left(self.ttft_times, self.now - cfg.attainment_window)
        recent_ttft = self.ttft_values[first:]
        within = sum(1 for v in recent_ttft if v <= cfg.ttft_slo) / len(recent_ttft) if recent_ttft else None
        prompts = np.sort(np.array(self.done_prompts[len(self.done_prompts) - mixed :]))
        histogram = (
            tuple((float(edge), float(np.searchsorted(prompts, edge, side="right"))) for edge in PROMPT_BUCKETS)
            if mixed
            else ()
        )
        arrived = len(self.arrival_times) - bisect_left(self.arrival_times, self.now - cfg.arrival_window)
        stable = [c for t, c in self.concurrency]
        panic = [c for t, c in self.concurrency if t >= self.now - 6]
        return FleetObservation(
            now=self.now,
            replicas=len(active),
            ready=len(ready),
            queue_depth=queue,
            held=len(self.held),
            running=running,
            tokens_per_second=rate,
            tokens_per_request=per_request,
            ttft_p99=_p99(self.ttft_times, self.ttft_values, self.now - cfg.quantile_window),
            tpot_p99=_p99(self.tpot_times, self.tpot_values, self.now - cfg.quantile_window),
            utilization=util,
            concurrency_stable=sum(stable) / len(stable) if stable else 0.0,
            concurrency_panic=sum(panic) / len(panic) if panic else 0.0,
            prompt_tokens_per_request=prompt,
            output_tokens_per_request=output,
            ttft_attainment=within,
            prompt_histogram=histogram,
            arrivals_per_second=arrived / cfg.arrival_window,
        )

    def _control(self) -> None:
        obs = self.observe()
        want = max(0, self.policy.desired(obs))
        if want != obs.replicas:
            self.scale_events += 1
            self._scale_to(want, obs.replicas)
        t = self.timeline
        t.time.append(self.now)
        t.replicas.append(max(0, want))
        t.ready.append(obs.ready)
        t.ttft_p99.append(obs.ttft_p99 if obs.ttft_p99 is not None else math.nan)
        t.tpot_p99.append(obs.tpot_p99 if obs.tpot_p99 is not None else math.nan)
        t.queue.append(obs.queue_depth + obs.held)

    def _scale_to(self, want: int, have: int) -> None:
        for _ in range(want - have):
            self._add_replica()
        if want >= have:
            return
        remove = have - want
        starting = sorted((r for r in self.replicas if r.state == "starting"), key=lambda r: -r.started)
        for rep in starting[:remove]:  # cancel the newest cold starts first: nothing to drain
            rep.state, rep.stopped = "stopped", self.now
            remove -= 1
        ready = sorted((r for r in self.replicas if r.state == "ready"), key=lambda r: (r.outstanding, -r.id))
        for rep in ready[:remove]:
            rep.state = "draining"
            if rep.outstanding == 0:
                rep.state, rep.stopped = "stopped", self.now


def refuse_trace_holders(policy: object, trace: Sequence[TraceRequest]) -> None:
    """Raise CausalityError if `policy` holds the trace, or any request of it, within a few attribute hops."""

    def look(value: object, where: str, depth: int) -> None:
        if value is trace or isinstance(value, TraceRequest):
            raise CausalityError(
                f"policy {getattr(policy, 'name', type(policy).__name__)!r} holds the trace ({where}): "
                "a policy may see only the fleet's observations"
            )
        if depth == 0 or isinstance(value, str | bytes | int | float | bool | type(None)):
            return
        if isinstance(value, dict):
            for key, item in value.items():
                look(item, f"{where}[{key!r}]", depth - 1)
        elif isinstance(value, list | tuple | set | frozenset | deque):
            for i, item in enumerate(value):
                look(item, f"{where}[{i}]", depth - 1)
                if i >= 1000:  # a long history of the policy's own numbers: its head tells
                    break
        elif hasattr(value, "__dict__"):
            for key, item in vars(value).items():
                look(item, f"{where}.{key}", depth - 1)

    look(policy, "policy", 4)


def _windowed_sum(times: list[float], cum: list[float], since: float) -> float:
    """Sum of the values recorded after `since`, from a cumulative series (cum[i] is the total before times[i])."""
    i = bisect_left(times, since)
    return cum[-1] - cum[i]


def _p99(times: list[float], values: list[float], since: float) -> float | None:
    i = bisect_left(times, since)
    if i >= len(values):
        return None
    return float(np.percentile(values[i:], 99))


def simulate(
    trace: Sequence[TraceRequest],
    model: LatencyModel,
    policy: Policy,
    config: SimConfig,
    before: Sequence[TraceRequest] | None = None,
) -> SimResult:
    """Replay a trace against a fleet run by `policy` (warmed up on the traffic `before` it, see `Fleet.run`);
    check that every request and token is accounted for."""
    result = Fleet(model, config, policy).run(trace, before)
    check_conservation(result, len(trace))
    return result


def check_conservation(result: SimResult, submitted: int) -> None:
    """Every request completed xor failed, in causal order; the engine processed exactly the tokens of the
    completed requests (prompt + output - 1: the first output token comes out of the prefill) plus any partial
    work of failed ones."""
    if len(result.measured) != submitted:
        raise AssertionError(f"{len(result.measured)} requests measured, {submitted} submitted")
    completed = [r for r in result.requests if not r.failed]
    for r in completed:
        if not (r.arrival <= r.first_token <= r.finish) or r.prefilled != r.prompt:
            raise AssertionError(f"request {r.id} completed out of order or without its whole prefill: {r}")
    need = sum(r.prompt + r.output - 1 for r in completed)
    partial = sum(r.prefilled + max(0, r.output - 1) for r in result.requests if r.failed)
    if any(r.failed and not math.isnan(r.first_token) and r.failed.startswith("held") for r in result.requests):
        raise AssertionError("a request that produced tokens was counted as held at the gateway")
    if not need <= result.tokens <= need + partial:
        raise AssertionError(f"engine processed {result.tokens} tokens; completed requests need {need}")
