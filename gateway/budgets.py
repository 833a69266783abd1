"""Per-team token rate limits and monthly dollar budgets, enforced at the gateway, and the spend they count.

Tokens are what the replica's answer says it used (`usage.prompt_tokens`, `usage.completion_tokens`), so a request
is admitted on what its team has used so far and charged when its answer is here:
- each token limit is a bucket holding a minute's worth that refills continuously; an answer takes its tokens even
  past empty (the bucket goes into debt), and a team is turned away while a bucket is empty, with `Retry-After`
  saying when it holds a token again;
- the monthly budget is month-to-date spend (UTC calendar month) against the team's dollars; past it, requests are
  turned away until the next month.
Spend is tokens x the deployment's $ per 1M tokens, the operator's `status.costPerMillionTokens` (GPU-hours priced
from the chart's `gpuPrices` over the tokens served, docs/cost-controls.md); tokens of a deployment without that
figure are counted apart as unpriced.

A streamed answer carries usage only in a last chunk that the client asks for (`stream_options.include_usage`).
For a metered stream that did not ask, the gateway asks upstream and takes that chunk, and the `usage: null` fields
it implies, out again, so the client sees the events it asked for.

Month-to-date spend is the fleet's when the gateway knows a Prometheus (`--prometheus-url`): every 30 s it reads
what every gateway replica's spend counters gained since the month began (gateway/fleet_spend.py) and adds what this
replica charged since; without one, each replica counts only the traffic it carried. Token buckets are the fleet's
when the gateway knows its peers (`--peers`): every second each replica reads the tokens the others charged and takes
them from its own buckets too (gateway/peers.py); without peers, each replica's buckets count its own traffic.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from infleet.api import metrics as names
from infleet.gateway.teams import Team, Teams

INPUT, OUTPUT = "input", "output"
MONTHLY_BUDGET = "monthly_budget"


class Refused(Exception):
    """A team over a limit: a 429 with this message, code and Retry-After (seconds)."""

    def __init__(self, message: str, code: str, retry_after: int, reason: str) -> None:
        super().__init__(message)
        self.message, self.code, self.retry_after, self.reason = message, code, retry_after, reason


@dataclass
class TokenBucket:
    """A minute's worth of tokens, refilled continuously; charging may take it below zero."""

    per_minute: int
    level: float
    stamp: float

    def refill(self, now: float) -> float:
        self.level = min(float(self.per_minute), self.level + (now - self.stamp) * self.per_minute / 60.0)
        self.stamp = now
        return self.level

    def wait(self, now: float) -> float:
        """Seconds until the bucket holds a token again (0 when it does)."""
        level = self.refill(now)
        return 0.0 if level >= 1.0 else (1.0 - level) * 60.0 / self.per_minute


def month_of(moment: datetime) -> str:
    return f"{moment.year:04d}-{moment.month:02d}"


def seconds_to_next_month(moment: datetime) -> float:
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    return (datetime(year, month, 1, tzinfo=UTC) - moment).total_seconds()


class BudgetMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        team = names.TEAM
        self.tokens = Counter(
            names.TEAM_TOKENS.removesuffix("_total"),
            "Tokens the answers' usage fields reported, by team, deployment, model and kind (input, output).",
            [team, *names.BY, names.MODEL, "kind"],
            registry=r,
        )
        self.spend = Counter(
            names.TEAM_SPEND.removesuffix("_total"),
            "Dollars spent: tokens x the deployment's status.costPerMillionTokens / 1e6.",
            [team, *names.BY, names.MODEL],
            registry=r,
        )
        self.unpriced = Counter(
            names.TEAM_UNPRICED_TOKENS.removesuffix("_total"),
            "Tokens of deployments without a status.costPerMillionTokens (not in spend).",
            [team, *names.BY, names.MODEL],
            registry=r,
        )
        self.month_spend = Gauge(
            names.TEAM_MONTH_SPEND,
            "Month-to-date dollars (UTC calendar month) the team's budget is checked against: the fleet's at the last "
            "read from Prometheus plus what this replica charged since (this replica's alone without Prometheus).",
            [team],
            registry=r,
        )
        self.budget = Gauge(names.TEAM_BUDGET, "The team's monthly budget in dollars.", [team], registry=r)
        self.peers = Gauge(
            names.GATEWAY_PEERS,
            "Other gateway replicas whose charged tokens this replica read at its last sync (--peers).",
            registry=r,
        )
        self.refused = Counter(
            names.TEAM_REFUSED.removesuffix("_total"),
            "Requests turned away with a 429, by reason (input_tokens, output_tokens, monthly_budget).",
            [team, "reason"],
            registry=r,
        )


@dataclass
class Budgets:
    """The teams' limits and what each team used; one per gateway replica, touched from its event loop only."""

    registry: CollectorRegistry
    teams: Teams = field(default_factory=lambda: Teams({}, {}, {}))
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], datetime] = lambda: datetime.now(UTC)
    metrics: BudgetMetrics = field(init=False)
    _buckets: dict[tuple[str, str], TokenBucket] = field(default_factory=dict, init=False)
    _month: str = field(default="", init=False)
    _fleet: dict[str, float] = field(default_factory=dict, init=False)  # month-to-date at the last fleet read
    _spent: dict[str, float] = field(default_factory=dict, init=False)  # charged here since that read
    _charged: dict[str, tuple[int, int]] = field(default_factory=dict, init=False)  # team -> tokens charged here

    def __post_init__(self) -> None:
        self.metrics = BudgetMetrics(self.registry)
        self.set_teams(self.teams)

    @property
    def enabled(self) -> bool:
        return bool(self.teams.teams)

    def set_teams(self, teams: Teams) -> None:
        """A new teams file: limits change now, what was used stays."""
        self.teams = teams
        for name in list(self._spent):
            if name not in teams.teams:
                self.metrics.month_spend.remove(name)
                del self._spent[name]
        for team in teams.teams.values():
            if team.monthly_budget_dollars is not None:
                self.metrics.budget.labels(team.name).set(team.monthly_budget_dollars)
            self._spent.setdefault(team.name, 0.0)
            self.metrics.month_spend.labels(team.name).set(self.month_spend(team.name))

    def month_spend(self, team: str) -> float:
        return self._fleet.get(team, 0.0) + self._spent.get(team, 0.0)

    def set_fleet_spend(self, month: str, totals: Mapping[str, float]) -> None:
        """The fleet's month-to-date spend per team, read from Prometheus: it includes what this replica charged
        until the read, so the local count starts again from here."""
        self._roll_month()
        if month != self._month:
            return  # read across a month boundary: the next read is right
        self._fleet = {name: float(v) for name, v in totals.items() if name in self.teams.teams}
        for name in self._spent:
            self._spent[name] = 0.0
            self.metrics.month_spend.labels(name).set(self.month_spend(name))

    def _roll_month(self) -> datetime:
        now = self.wall()
        month = month_of(now)
        if month != self._month:
            self._month = month
            self._fleet = {}
            for name in self._spent:
                self._spent[name] = 0.0
                self.metrics.month_spend.labels(name).set(0.0)
        return now

    def _bucket(self, team: Team, kind: str) -> TokenBucket | None:
        limit = team.input_tokens_per_minute if kind == INPUT else team.output_tokens_per_minute
        if limit is None:
            return None
        bucket = self._buckets.get((team.name, kind))
        if bucket is None or bucket.per_minute != limit:
            bucket = self._buckets[(team.name, kind)] = TokenBucket(limit, float(limit), self.clock())
        return bucket

    def admit(self, team: Team) -> None:
        """Raises Refused when the team is over a token rate or its monthly budget."""
        now = self._roll_month()
        budget = team.monthly_budget_dollars
        if budget is not None and (spent := self.month_spend(team.name)) >= budget:
            self.metrics.refused.labels(team.name, MONTHLY_BUDGET).inc()
            raise Refused(
                f"team {team.name!r} has spent its monthly budget of ${budget:g} for {self._month} "
                f"(${spent:.4f} so far); it renews at the start of next month (UTC)",
                "insufficient_quota",
                math.ceil(seconds_to_next_month(now)),
                MONTHLY_BUDGET,
            )
        for kind in (INPUT, OUTPUT):
            bucket = self._bucket(team, kind)
            if bucket is not None and (wait := bucket.wait(self.clock())) > 0:
                self.metrics.refused.labels(team.name, f"{kind}_tokens").inc()
                raise Refused(
                    f"team {team.name!r} is over its limit of {bucket.per_minute} {kind} tokens per minute; "
                    f"retry in {math.ceil(wait)} s",
                    "rate_limit_exceeded",
                    max(1, math.ceil(wait)),
                    f"{kind}_tokens",
                )

    def charge(
        self, team: Team | None, namespace: str, deployment: str, model: str, price: float | None, usage: Usage
    ) -> None:
        """Count an answer's tokens (and their dollars) against its team ("" when none)."""
        name = team.name if team else ""
        labels = (name, namespace, deployment, model)
        self.metrics.tokens.labels(*labels, INPUT).inc(usage.input)
        self.metrics.tokens.labels(*labels, OUTPUT).inc(usage.output)
        if team is not None:
            self._take(team, usage.input, usage.output)
            before = self._charged.get(name, (0, 0))
            self._charged[name] = (before[0] + usage.input, before[1] + usage.output)
        if price is None:
            self.metrics.unpriced.labels(*labels).inc(usage.input + usage.output)
            return
        dollars = (usage.input + usage.output) * price / 1e6
        self.metrics.spend.labels(*labels).inc(dollars)
        if team is not None:
            self._roll_month()
            self._spent[name] = self._spent.get(name, 0.0) + dollars
            self.metrics.month_spend.labels(name).set(self.month_spend(name))

    def _take(self, team: Team, input_tokens: int, output_tokens: int) -> None:
        for kind, n in ((INPUT, input_tokens), (OUTPUT, output_tokens)):
            bucket = self._bucket(team, kind)
            if bucket is not None:
                bucket.refill(self.clock())
                bucket.level -= n

    def charged(self) -> dict[str, tuple[int, int]]:
        """(input, output) tokens this replica has charged each team since it started: what its peers read."""
        return dict(self._charged)

    def debit(self, gained: Mapping[str, tuple[int, int]]) -> None:
        """Tokens the other gateway replicas charged, per team: taken from this replica's buckets too (not counted
        again in spend or the token metrics, which are each replica's own), so a limit holds across the fleet."""
        for name, (input_tokens, output_tokens) in gained.items():
            team = self.teams.teams.get(name)
            if team is not None:
                self._take(team, input_tokens, output_tokens)


@dataclass(frozen=True)
class Usage:
    input: int
    output: int

    @classmethod
    def of(cls, payload: Any) -> Usage | None:
        """The OpenAI `usage` object of an answer or a stream's last chunk."""
        usage = payload.get("usage") if isinstance(payload, dict) else None
        if not isinstance(usage, dict):
            return None
        prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        if not isinstance(prompt, int) or not isinstance(completion, int) or prompt < 0 or completion < 0:
            return None
        return cls(prompt, completion)


def body_usage(body: bytes) -> Usage | None:
    try:
        return Usage.of(json.loads(body))
    except (ValueError, UnicodeDecodeError):
        return None


def wants_usage(payload: Mapping[str, Any]) -> bool:
    """The client asked for a streamed answer's usage chunk (`stream_options.include_usage`)."""
    options = payload.get("stream_options")
    return isinstance(options, Mapping) and options.get("include_usage") is True


def ask_for_usage(payload: dict[str, Any]) -> bool:
    """Make a streamed request report its usage; True when the client had not asked (the gateway must hide it)."""
    if wants_usage(payload):
        return False
    options = payload.get("stream_options")
    payload["stream_options"] = {**(options if isinstance(options, Mapping) else {}), "include_usage": True}
    return True


def _hidden(event: bytes) -> bytes | None:
    """One SSE event without the usage the client did not ask for: None for the usage-only last chunk."""
    text = event.strip()
    if not text.startswith(b"data:") or text == b"data: [DONE]":
        return event
    try:
        payload = json.loads(text[5:])
    except (ValueError, UnicodeDecodeError):
        return event
    if not isinstance(payload, dict) or "usage" not in payload:
        return event
    if payload.get("choices") == [] and payload["usage"] is not None:
        return None
    del payload["usage"]
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


async def metered(
    events: AsyncIterable[str | bytes | memoryview], hide: bool, on_usage: Callable[[Usage], None]
) -> AsyncIterator[bytes]:
    """Relay a stream's events, reading the usage chunk as it passes (and taking it out when `hide`)."""
    async for part in events:
        chunk = part.encode() if isinstance(part, str) else bytes(part)
        if b'"usage"' not in chunk:
            yield chunk
            continue
        out = []
        for event in chunk.replace(b"\r\n", b"\n").split(b"\n\n"):
            if not event.strip():
                continue
            event += b"\n\n"
            if event.startswith(b"data:") and b'"usage":{' in event.replace(b" ", b""):
                try:
                    usage = Usage.of(json.loads(event[5:]))
                except (ValueError, UnicodeDecodeError):
                    usage = None
                if usage is not None:
                    on_usage(usage)
            kept = _hidden(event) if hide else event
            if kept is not None:
                out.append(kept)
        if out:
            yield b"".join(out)
