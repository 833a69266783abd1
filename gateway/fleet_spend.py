"""Every gateway replica's spend for the month, read back from Prometheus, so that each replica checks a team's
monthly budget against what the whole fleet spent (replicas that came and went included), not only its own share.

Every `every` seconds a thread asks Prometheus what the spend counters of all gateway replicas gained since the
month began (UTC) and hands the totals to the event loop (`Budgets.set_fleet_spend`). Prometheus lags by up to one
scrape interval: spend in that window is counted again at the next read. A failed read keeps the last figures and
is logged.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

import httpx

from infleet.api import metrics as names
from infleet.gateway.budgets import Budgets, month_of

log = logging.getLogger("infleet.gateway.fleet_spend")

EVERY = 30.0


def month_start(moment: datetime) -> datetime:
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def read_fleet_spend(url: str, now: datetime | None = None, timeout: float = 10.0) -> tuple[str, dict[str, float]]:
    """(month, month-to-date dollars per team) from Prometheus at `url`; raises on any failure."""
    now = now or datetime.now(UTC)
    start = month_start(now)
    window = max(1, int((now - start).total_seconds()))
    expr = names.gained_since(names.TEAM_SPEND, start.timestamp(), window, names.TEAM)
    r = httpx.get(f"{url.rstrip('/')}/api/v1/query", params={"query": expr, "time": f"{now.timestamp():.3f}"},
                  timeout=timeout)  # fmt: skip
    r.raise_for_status()
    body = r.json()
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus: {body.get('error')}")
    totals = {item["metric"].get(names.TEAM, ""): float(item["value"][1]) for item in body["data"]["result"]}
    return month_of(now), totals


def follow_fleet_spend(budgets: Budgets, url: str | None, every: float = EVERY) -> Callable[[], None]:
    """Start (from the app's start-up, on its loop) the thread that reads the fleet's spend; nothing without `url`."""

    def start() -> None:
        if not url:
            return
        loop = asyncio.get_running_loop()

        def follow() -> None:
            while True:
                try:
                    month, totals = read_fleet_spend(url)
                    loop.call_soon_threadsafe(budgets.set_fleet_spend, month, totals)
                except (httpx.HTTPError, RuntimeError, ValueError, KeyError) as e:
                    log.warning("fleet spend not read from %s, the last figures stay: %s", url, e)
                threading.Event().wait(every)

        threading.Thread(target=follow, name="infleet-gateway-fleet-spend", daemon=True).start()

    return start
