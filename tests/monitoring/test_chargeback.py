"""`infleet report chargeback` against a real Prometheus scraping two gateway replicas' real metering (the
gateway's own Budgets and metrics code), with the chart's rules loaded."""

from __future__ import annotations

import csv
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, start_http_server

from infleet.gateway.budgets import Budgets, Refused, Usage
from infleet.gateway.fleet_spend import read_fleet_spend
from infleet.gateway.teams import Teams
from infleet.monitoring.chargeback import Month, main
from infleet.monitoring.scrape import static_job

from .conftest import free_port, launch_prometheus

pytestmark = pytest.mark.slow

TEAMS = Teams.parse(
    {
        "teams": {
            "web": {"apiKeys": ["k-web"], "monthlyBudgetDollars": 10},
            "batch": {},
            "tight": {"monthlyBudgetDollars": 0.05},
        }
    }
)


def query(url: str, expr: str) -> list[dict[str, object]]:
    body = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=30).json()
    assert body["status"] == "success", body
    result: list[dict[str, object]] = body["data"]["result"]
    return result


@pytest.fixture
def replicas_and_prometheus(prometheus_bin: str, tmp_path: Path) -> Iterator[tuple[list[Budgets], str]]:
    replicas, servers, jobs = [], [], []
    for i in range(2):
        registry = CollectorRegistry()
        replicas.append(Budgets(registry, TEAMS))
        port = free_port()
        server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
        servers.append(server)
        labels = {"namespace": "infleet-system", "pod": f"gateway-{i}"}
        jobs.append(static_job(f"gateway-{i}", [f"127.0.0.1:{port}"], labels, scrape_interval="1s"))
    _, proc, port, log = launch_prometheus(prometheus_bin, jobs, tmp_path)
    try:
        yield replicas, f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
        for server in servers:
            server.shutdown()


def scraped(url: str, expr: str, value: float, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            got = query(url, expr)
            if got and abs(float(got[0]["value"][1]) - value) < 1e-9:  # type: ignore[index]
                return
        except (httpx.HTTPError, AssertionError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"Prometheus never saw {expr} == {value}")


def test_the_monthly_csv_equals_what_the_replicas_metered(
    replicas_and_prometheus: tuple[list[Budgets], str], tmp_path: Path
) -> None:
    (a, b), url = replicas_and_prometheus
    web, batch, tight = TEAMS.teams["web"], TEAMS.teams["batch"], TEAMS.teams["tight"]
    charged = [  # (replica, team, namespace, deployment, model, $/1M, usage)
        (a, web, "shop", "chat", "smollm2", 200.0, Usage(100, 40)),
        (b, web, "shop", "chat", "smollm2", 200.0, Usage(50, 10)),
        (a, batch, "etl", "summarize", "llama", 20.0, Usage(3000, 500)),
        (b, None, "etl", "summarize", "llama", 20.0, Usage(7, 3)),  # no team claims it
        (b, batch, "etl", "summarize", "llama", None, Usage(11, 2)),  # no price yet: tokens only
        (a, tight, "etl", "summarize", "llama", 1e4, Usage(3, 0)),  # $0.03 on each replica: $0.06 of $0.05
        (b, tight, "etl", "summarize", "llama", 1e4, Usage(3, 0)),
    ]
    for replica, team, ns, dep, model, price, usage in charged:
        replica.charge(team, ns, dep, model, price, usage)
    scraped(url, 'sum(infleet_gateway_team_tokens_total{kind="input"})', 3174)
    # the series exist from the first scrape on; more traffic afterwards is counted too
    a.charge(web, "shop", "chat", "smollm2", 200.0, Usage(1000, 1000))
    scraped(url, 'sum(infleet_gateway_team_tokens_total{kind="input"})', 4174)
    web_spend = (140 + 60 + 2000) * 200.0 / 1e6

    # each replica alone is under tight's budget; once it reads the fleet's spend, it is not
    b.admit(tight)
    month, totals = read_fleet_spend(url)
    assert totals["web"] == pytest.approx(web_spend) and totals["tight"] == pytest.approx(0.06)
    for replica in (a, b):
        replica.set_fleet_spend(month, totals)
    with pytest.raises(Refused):
        b.admit(tight)
    assert a.month_spend("web") == pytest.approx(web_spend)
    scraped(url, 'infleet:team_budget_burn:ratio{team="web"}', web_spend / 10)  # the chart's rule, live

    out = tmp_path / "chargeback.csv"
    month = datetime.now(UTC).strftime("%Y-%m")
    assert main(["--month", month, "--prometheus", url, "--out", str(out)]) == 0
    rows = {(r["team"], r["namespace"], r["deployment"], r["model"]): r for r in csv.DictReader(out.open())}
    assert set(rows) == {
        ("web", "shop", "chat", "smollm2"),
        ("batch", "etl", "summarize", "llama"),
        ("unassigned", "etl", "summarize", "llama"),
        ("tight", "etl", "summarize", "llama"),
    }
    web_row = rows[("web", "shop", "chat", "smollm2")]
    assert (int(web_row["input_tokens"]), int(web_row["output_tokens"])) == (1150, 1050)
    assert float(web_row["spend_dollars"]) == pytest.approx(web_spend, abs=1e-6)
    batch_row = rows[("batch", "etl", "summarize", "llama")]
    assert (int(batch_row["input_tokens"]), int(batch_row["output_tokens"])) == (3011, 502)
    assert float(batch_row["spend_dollars"]) == pytest.approx(3500 * 20.0 / 1e6, abs=1e-6)  # unpriced ones: $0
    assert float(rows[("unassigned", "etl", "summarize", "llama")]["spend_dollars"]) == pytest.approx(10 * 20 / 1e6)
    assert {r["exact"] for r in rows.values()} == {"true"} and {r["month"] for r in rows.values()} == {month}


def test_bad_month_and_unreachable_prometheus(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--month", "2026-13"])
    assert "expected YYYY-MM" in capsys.readouterr().err
    assert main(["--month", "2020-01", "--prometheus", f"http://127.0.0.1:{free_port()}"]) == 1
    assert "cannot reach Prometheus" in capsys.readouterr().err
    month = Month.parse("2024-02", now=datetime(2026, 1, 1, tzinfo=UTC))
    assert month.seconds == 29 * 86400  # a leap February, whole
