"""`infleet report` draws PNGs from a real Prometheus, and explains itself when it cannot."""

from __future__ import annotations

from pathlib import Path

import pytest

from infleet.api.durations import seconds
from infleet.cli import COMMANDS
from infleet.monitoring.report import Source, build_report, main

from .conftest import LivePrometheus


@pytest.mark.slow
def test_report_plots_every_quantity(live_prometheus: LivePrometheus, tmp_path: Path) -> None:
    source = Source(live_prometheus.url, since=120, step=1, selector='namespace=~".*",deployment=~".*"')
    counts = build_report(source, tmp_path, rate_window="10s")
    assert set(counts) == {"load.png", "replicas.png", "tier.png", "latency.png", "slo.png", "cost.png"}
    assert counts["load.png"] == 4  # requests/s and tokens/s for both deployments
    assert counts["replicas.png"] == 4  # current and desired
    assert counts["tier.png"] == 2
    assert counts["latency.png"] == 6  # three SLIs x two deployments
    assert counts["cost.png"] == 2
    assert counts["slo.png"] == 4  # attainment and budget left, both deployments
    lines = dict(line.split(": ", 1) for line in source.summary)
    assert set(lines) == {"team-a/chat", "team-b/coder"}
    # each against its own objective: chat misses half its requests against 99%, coder's worst SLI (TTFT) against 90%
    assert lines["team-a/chat"].startswith("objective 99%, attained ") and "OVERSPENT" in lines["team-a/chat"]
    assert lines["team-b/coder"].startswith("objective 90%, attained ") and "OVERSPENT" in lines["team-b/coder"]
    for name in counts:
        png = (tmp_path / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000


@pytest.mark.slow
def test_report_command(live_prometheus: LivePrometheus, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert COMMANDS["report"][0] == "infleet.monitoring.report"
    out = tmp_path / "report"
    rc = main(["--prometheus", live_prometheus.url, "--since", "2m", "--rate-window", "10s", "--out", str(out)])
    assert rc == 0
    assert sorted(p.name for p in out.glob("*.png")) == [
        "cost.png",
        "latency.png",
        "load.png",
        "replicas.png",
        "slo.png",
        "tier.png",
    ]
    printed = capsys.readouterr().out
    assert "latency.png: 6 series" in printed
    assert "team-b/coder: objective 90%, attained" in printed and "budget left" in printed


def test_unreachable_prometheus_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--prometheus", "http://127.0.0.1:9", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("infleet report: cannot reach Prometheus at http://127.0.0.1:9") and err.count("\n") == 1


def test_bad_duration_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--since", "yesterday"])
    assert exc.value.code == 2
    assert "not a duration: 'yesterday'" in capsys.readouterr().err
    assert seconds("1h30m") == 5400
