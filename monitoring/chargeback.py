"""`infleet report chargeback --month YYYY-MM`: one CSV row per team, deployment and model with the tokens and
dollars the gateway metered in that month (UTC), from Prometheus.

Per row, the month's amount is what each gateway replica's counter (one series per replica pod) gained between
the month's start and its end (or now, for the current month): its last value in the month minus its value at the
start (nothing to subtract for a series born in the month), summed over the replicas. That is exact, including
replicas that came and went, as long as no counter restarted in place; a row where one did falls back to PromQL's
`increase()` (extrapolated, so close but not exact) and says so in its `exact` column.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import httpx

from infleet.api import metrics as names

ROW = (names.TEAM, names.NAMESPACE, names.DEPLOYMENT, names.MODEL)
COLUMNS = ("month", *ROW, "input_tokens", "output_tokens", "spend_dollars", "exact")
UNASSIGNED = "unassigned"  # traffic no team claims (label team="")
Key = tuple[str, ...]


@dataclass(frozen=True)
class Month:
    start: datetime
    end: datetime  # the month's end, or now

    @classmethod
    def parse(cls, text: str, now: datetime | None = None) -> Month:
        match = re.fullmatch(r"(\d{4})-(\d{2})", text)
        if not match or not 1 <= int(match[2]) <= 12:
            raise ValueError(f"--month {text!r}: expected YYYY-MM, e.g. 2026-11")
        year, month = int(match[1]), int(match[2])
        start = datetime(year, month, 1, tzinfo=UTC)
        end = datetime(year + 1, 1, 1, tzinfo=UTC) if month == 12 else datetime(year, month + 1, 1, tzinfo=UTC)
        now = now or datetime.now(UTC)
        if start >= now:
            raise ValueError(f"--month {text}: the month has not started yet")
        return cls(start, min(end, now))

    @property
    def seconds(self) -> int:
        return max(1, int((self.end - self.start).total_seconds()))


Query = Callable[[str, float], list[dict[str, Any]]]


def prometheus_query(url: str) -> Query:
    def query(expr: str, at: float) -> list[dict[str, Any]]:
        try:
            r = httpx.get(f"{url.rstrip('/')}/api/v1/query", params={"query": expr, "time": f"{at:.3f}"}, timeout=60)
        except httpx.HTTPError as e:
            raise ConnectionError(f"cannot reach Prometheus at {url} ({type(e).__name__})") from None
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        if r.status_code != 200 or body.get("status") != "success":
            raise RuntimeError(f"Prometheus answered {r.status_code}: {body.get('error') or r.text[:200]}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    return query


def _by_row(result: list[dict[str, Any]]) -> dict[Key, float]:
    out: dict[Key, float] = {}
    for item in result:
        key = tuple(item["metric"].get(label, "") for label in ROW)
        out[key] = out.get(key, 0.0) + float(item["value"][1])
    return out


def month_totals(query: Query, month: Month, series: str) -> tuple[dict[Key, float], set[Key]]:
    """Per row: what `series` (a counter, one series per gateway replica) gained in the month; and the rows where a
    counter restarted in place (their figure is `increase()`'s)."""
    by, window, end, start = ", ".join(ROW), f"{month.seconds}s", month.end.timestamp(), month.start.timestamp()
    totals = _by_row(query(names.gained_since(series, start, month.seconds, by), end))
    restarted = {k for k, v in _by_row(query(f"sum by ({by}) (resets({series}[{window}]))", end)).items() if v > 0}
    if restarted:
        increase = _by_row(query(f"sum by ({by}) (increase({series}[{window}]))", end))
        totals.update({k: increase.get(k, 0.0) for k in restarted})
    return totals, restarted


def chargeback_rows(query: Query, month: Month, label: str) -> list[dict[str, Any]]:
    spend, inexact = month_totals(query, month, names.TEAM_SPEND)
    inputs, inexact_in = month_totals(query, month, f'{names.TEAM_TOKENS}{{kind="input"}}')
    outputs, inexact_out = month_totals(query, month, f'{names.TEAM_TOKENS}{{kind="output"}}')
    inexact |= inexact_in | inexact_out
    rows = []
    for key in sorted(set(spend) | set(inputs) | set(outputs)):
        team, namespace, deployment, model = key
        rows.append(
            {
                "month": label,
                names.TEAM: team or UNASSIGNED,
                names.NAMESPACE: namespace,
                names.DEPLOYMENT: deployment,
                names.MODEL: model,
                "input_tokens": round(inputs.get(key, 0.0)),
                "output_tokens": round(outputs.get(key, 0.0)),
                "spend_dollars": f"{spend.get(key, 0.0):.6f}",
                "exact": "false" if key in inexact else "true",
            }
        )
    return rows


def write_csv(rows: list[dict[str, Any]], out: TextIO) -> None:
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="infleet report chargeback",
        description="CSV of each team's tokens and spend per deployment and model in a month (UTC), from the "
        "gateway's metering in Prometheus.",
    )
    parser.add_argument("--month", required=True, help="YYYY-MM (the current month: up to now)")
    parser.add_argument(
        "--prometheus",
        default=os.environ.get("PROMETHEUS_URL", "http://127.0.0.1:9090"),
        help="Prometheus base URL (default: $PROMETHEUS_URL or http://127.0.0.1:9090)",
    )
    parser.add_argument("--out", type=Path, help="write the CSV here (default: standard output)")
    args = parser.parse_args(argv)
    try:
        month = Month.parse(args.month)
    except ValueError as e:
        parser.error(str(e))
    try:
        rows = chargeback_rows(prometheus_query(args.prometheus), month, args.month)
    except (ConnectionError, RuntimeError, ValueError) as e:
        print(f"infleet report chargeback: {e}", file=sys.stderr)
        return 1
    if args.out:
        with args.out.open("w", newline="") as f:
            write_csv(rows, f)
        print(f"{args.out}: {len(rows)} rows", file=sys.stderr)
    else:
        write_csv(rows, sys.stdout)
    if not rows:
        print(f"infleet report chargeback: no metered traffic in {args.month} at {args.prometheus}", file=sys.stderr)
    return 0
