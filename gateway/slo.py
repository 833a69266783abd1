"""Each request judged against its own deployment's SLO thresholds, exactly, whatever engine served it.

The gateway sees every request to every deployment (infleet or vLLM), so it counts
`infleet_gateway_slo_requests_total{namespace, deployment, sli, result="good"|"bad"}` per SLI the deployment's
`spec.slo` sets; the chart's rules and the operator turn the counts into attainment, burn rates and budget left
(docs/monitoring.md says why the counting lives here).

What is measured, from the gateway's side (what the client sees, including any time held while scaling from zero):
- ttft: request arrival to the first streamed event; tpot: the mean time between streamed events after the first
  (the request's time per output token); e2e: arrival to the last byte. A non-streamed answer has no first token
  to time, so it counts for e2e only.
- A request that fails on the server side (5xx, an interrupted stream) is bad for every SLI; a client error (4xx)
  is not counted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client import Counter

from infleet.api.durations import seconds_or_none

SLIS = ("ttft", "tpot", "e2e")


@dataclass(frozen=True)
class Thresholds:
    """A deployment's per-request SLO thresholds in seconds (None: not an objective)."""

    ttft: float | None = None
    tpot: float | None = None
    e2e: float | None = None

    @classmethod
    def from_spec(cls, slo: dict[str, object] | None) -> Thresholds:
        slo = slo or {}
        e2e = slo.get("e2eP99")
        return cls(seconds_or_none(slo.get("ttftP99")), seconds_or_none(slo.get("tpotP99")), seconds_or_none(e2e))

    def items(self) -> list[tuple[str, float]]:
        return [(sli, value) for sli in SLIS if (value := getattr(self, sli)) is not None]


NO_SLO = Thresholds()


def verdicts(
    thresholds: Thresholds, ttft: float | None, tpot: float | None, e2e: float | None, failed: bool = False
) -> dict[str, bool]:
    """SLI -> good for one request's measured values (None: not measurable for this request); a failed request is
    bad for every SLI the deployment sets."""
    measured = {"ttft": ttft, "tpot": tpot, "e2e": e2e}
    out = {}
    for sli, threshold in thresholds.items():
        value = measured[sli]
        if failed:
            out[sli] = False
        elif value is not None:
            out[sli] = value <= threshold
    return out


@dataclass
class RequestClock:
    """One request's timings, fed as its answer flows through the gateway."""

    thresholds: Thresholds
    started: float = field(default_factory=time.perf_counter)
    first: float | None = None
    last: float | None = None
    events: int = 0

    def event(self, count: int = 1) -> None:
        """`count` streamed events (each a token, or a few) reached the client now."""
        if count <= 0:
            return
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self.last = now
        self.events += count

    def judge(self, failed: bool = False) -> dict[str, bool]:
        """SLI -> good, for every SLI the deployment sets and this request can be judged on."""
        ttft = tpot = None
        if self.first is not None:
            ttft = self.first - self.started
            if self.events > 1 and self.last is not None:
                tpot = (self.last - self.first) / (self.events - 1)
        return verdicts(self.thresholds, ttft, tpot, time.perf_counter() - self.started, failed)

    def count(self, counter: Counter, namespace: str, deployment: str, failed: bool = False) -> None:
        if self.thresholds == NO_SLO:  # nothing to judge: the usual deployment, every request
            return
        for sli, good in self.judge(failed).items():
            counter.labels(namespace, deployment, sli, "good" if good else "bad").inc()
