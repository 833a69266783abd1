"""A cascade on the simulated fleet: two deployments, the first answering every request whole, the second asked again
for the escalated ones when the first answer is done (the gateway's cascade, docs/cost-controls.md#cascades).

An escalated request's TTFT runs from its arrival at the gateway to the second model's first token, so it includes
the first model's whole answer, as a client of the gateway sees it. Which requests escalate is drawn at a given rate
(the rate a threshold gave on labelled rows it was not chosen on), independent of the request's size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from infleet.autoscaler.cost import cost_of_gpu_hours
from infleet.autoscaler.latency_model import LatencyModel
from infleet.autoscaler.simulator.fleet import Policy, Request, SimConfig, SimResult, simulate
from infleet.autoscaler.simulator.trace import TraceRequest


def escalations(count: int, rate: float, seed: int) -> np.ndarray:
    """Which of `count` requests escalate: a seeded draw at `rate` (a boolean mask)."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"an escalation rate is a share in [0, 1], got {rate}")
    return np.random.default_rng(seed).random(count) < rate


def sample(trace: Sequence[TraceRequest], rate: float, seed: int) -> list[TraceRequest]:
    """The escalated share of a trace at its own arrivals: what the second deployment's policy is tuned on."""
    mask = escalations(len(trace), rate, seed)
    return [r for r, up in zip(trace, mask, strict=True) if up]


@dataclass(frozen=True)
class CascadeResult:
    first: SimResult
    second: SimResult
    escalated: int  # measured requests the second deployment answered
    attained: int  # measured requests within the SLO, end to end
    measured: int
    failed: int  # measured requests that either deployment failed
    served_tokens: int  # prompt + output of the answers the clients received (each request once)

    @property
    def slo_attainment(self) -> float:
        return self.attained / self.measured if self.measured else 1.0

    def cost_per_million_tokens(self, first_price: float, second_price: float) -> float:
        dollars = self.first.gpu_seconds / 3600 * first_price + self.second.gpu_seconds / 3600 * second_price
        return cost_of_gpu_hours(1.0, dollars, self.served_tokens)


def simulate_cascade(
    trace: Sequence[TraceRequest],
    first: tuple[LatencyModel, Policy],
    second: tuple[LatencyModel, Policy],
    config: SimConfig,
    rate: float,
    before: Sequence[TraceRequest] | None = None,
) -> CascadeResult:
    """Replay `trace` (after the warm-up `before` it) through the first deployment, then the escalated requests,
    each arriving when its first answer finished, through the second; every request judged end to end."""
    one = simulate(trace, *first, config, before)
    shift = config.warmup  # the simulator's clock runs `warmup` seconds ahead of the trace's
    mask = escalations(len(one.requests), rate, config.seed)
    up = [r for r, m in zip(one.requests, mask, strict=True) if m and not r.failed]
    # an escalation that left the first deployment before the trace's start is part of the second one's warm-up
    later = sorted((r for r in up if r.finish >= shift), key=lambda r: r.finish)
    earlier = [r for r in up if r.finish < shift]
    again = [TraceRequest(r.finish - shift, r.prompt, r.output) for r in later]
    lead = [TraceRequest(r.finish - shift, r.prompt, r.output) for r in earlier]
    two = simulate(again, *second, config, lead)
    answer: dict[int, Request] = {r.id: a for r, a in zip(later, two.measured, strict=True)}

    attained = escalated = failed = tokens = 0
    for r in one.measured:
        final = answer.get(r.id, r)  # the request's last answer: the second model's when it escalated
        escalated += final is not r
        if r.failed or final.failed:
            failed += 1
            continue
        tokens += r.prompt + r.output
        ttft = final.first_token - r.arrival  # one clock: the second replay is shifted as the first
        if ttft <= config.ttft_slo and final.tpot <= config.tpot_slo:
            attained += 1
    return CascadeResult(one, two, escalated, attained, len(one.measured), failed, tokens)
