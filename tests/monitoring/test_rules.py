"""The generated rule files: valid for promtool, alerts that fire on real burns and only then, and documented."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from infleet.monitoring.names import INFLEET, VLLM
from infleet.monitoring.render import REPO, to_yaml
from infleet.monitoring.rule_tests import promtool_cases
from infleet.monitoring.rules import alert_rules, good_rate, prometheus_rule, recording_rules, rule_files, sli_expr
from infleet.monitoring.slo import BURN_ALERTS, WINDOWS, SLOTargets

CHART_RULES = sorted((REPO / "charts/infleet/rules").glob("*.yaml"))


def run(cmd: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_chart_rule_files_pass_promtool_check(promtool: str) -> None:
    assert [p.name for p in CHART_RULES] == ["slo-alerts.yaml", "slo-recording.yaml"]
    out = run([promtool, "check", "rules", *map(str, CHART_RULES)])
    assert out.count("SUCCESS") == 2


def test_rules_for_one_deployment_with_its_own_slo_pass_promtool_check(promtool: str, tmp_path: Path) -> None:
    targets = SLOTargets(ttft=0.5, tpot=0.03, e2e=None, objective=0.995)
    for name, rules in rule_files(targets, selector='namespace="ml",deployment="chat"').items():
        (tmp_path / name).write_text(to_yaml(rules))
    run([promtool, "check", "rules", *(str(p) for p in sorted(tmp_path.glob("*.yaml")))])


@pytest.fixture(scope="module")
def rule_test_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The rules rendered from code next to the promtool test cases that exercise them."""
    directory = tmp_path_factory.mktemp("promtool")
    names = []
    for name, rules in rule_files().items():
        (directory / name).write_text(to_yaml(rules))
        names.append(name)
    for name, cases in promtool_cases(names).items():
        (directory / name).write_text(to_yaml(cases))
    return directory


@pytest.mark.slow
@pytest.mark.parametrize("case_file", ["burn-pages.yaml", "burn-tickets.yaml", "burn-below-budget.yaml"])
def test_promtool_unit_tests(promtool: str, rule_test_dir: Path, case_file: str) -> None:
    """burn-pages: 14.4x fires the fast page within its hour (infleet and vllm names, three SLIs) and 6x the slow
    page within 6h; burn-tickets: 3x and 1x within 1d and 3d; burn-below-budget: 0.9x fires nothing in 3 days."""
    out = run([promtool, "test", "rules", case_file], cwd=rule_test_dir)
    assert "SUCCESS" in out


def test_promtool_unit_tests_catch_a_wrong_threshold(promtool: str, rule_test_dir: Path, tmp_path: Path) -> None:
    """The page test is not vacuous: an alert that needs 14.5x misses a 14.4x burn and promtool says so."""
    for path in rule_test_dir.glob("*.yaml"):
        (tmp_path / path.name).write_text(path.read_text())
    alerts = tmp_path / "slo-alerts.yaml"
    alerts.write_text(alerts.read_text().replace(">= 14.4", ">= 14.5"))
    proc = subprocess.run([promtool, "test", "rules", "burn-pages.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "InfleetSLOBudgetBurnFast fires within 1h at 14.4x" in proc.stdout + proc.stderr


def test_threshold_on_a_bucket_edge_reads_that_bucket() -> None:
    expr = good_rate(INFLEET.tpot, 0.1, "5m")
    assert 'le="0.1"' in expr and "*" not in expr


def test_threshold_between_edges_is_interpolated() -> None:
    """2 s TTFT lies between the edges 1.0 and 2.5: weights 1/3 and 2/3, as histogram_quantile would assume."""
    expr = good_rate(VLLM.ttft, 2.0, "1h")
    assert 'vllm:time_to_first_token_seconds_bucket{le="1.0"}[1h]' in expr
    assert 'vllm:time_to_first_token_seconds_bucket{le="2.5"}[1h]' in expr
    assert "* 0.333333" in expr and "* 0.666667" in expr


def test_threshold_beyond_the_histogram_is_refused() -> None:
    with pytest.raises(ValueError, match="above its largest bucket edge"):
        good_rate(INFLEET.tpot, 1000.0, "5m")


def test_bad_targets_are_refused() -> None:
    with pytest.raises(ValueError, match="objective"):
        SLOTargets(objective=99.0)
    with pytest.raises(ValueError, match="positive"):
        SLOTargets(ttft=0.0)


def test_every_sli_covers_both_engines_and_every_window() -> None:
    rules = recording_rules()
    slis = [r for r in rules if r["record"].startswith("infleet:slo_good:ratio_rate") and "labels" in r]
    assert len(slis) == 3 * len(WINDOWS)
    for rule in slis:
        assert "infleet_" in rule["expr"] and "vllm:" in rule["expr"]
    assert sli_expr("e2e", 30.0, "5m").count("> 0") == 2  # no NaN when a window saw no requests


def test_selector_narrows_every_raw_and_recorded_series() -> None:
    sel = 'namespace="ml",deployment="chat"'
    for rule in recording_rules(selector=sel) + alert_rules(selector=sel):
        names = re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\}|\[)", rule["expr"])
        for metric, rest in names:
            if metric in ("by", "rate", "sum", "avg_over_time", "round"):
                continue
            assert sel in rest, f"{metric} in {rule.get('record') or rule.get('alert')} is not narrowed"


def test_alerts_follow_the_recipe_and_link_their_runbook() -> None:
    runbook = (REPO / "docs/runbooks.md").read_text()
    headings = {
        re.sub(r"[^a-z0-9-]", "", h.strip().lower().replace(" ", "-")) for h in re.findall(r"^## (.+)$", runbook, re.M)
    }
    alerts = {r["alert"]: r for r in alert_rules()}
    assert set(alerts) == {a.name for a in BURN_ALERTS}
    expected = {
        "InfleetSLOBudgetBurnFast": (14.4, "1h", "5m", "page"),
        "InfleetSLOBudgetBurnHigh": (6, "6h", "30m", "page"),
        "InfleetSLOBudgetBurnSteady": (3, "1d", "2h", "ticket"),
        "InfleetSLOBudgetBurnSlow": (1, "3d", "6h", "ticket"),
    }
    for name, (burn, long, short, severity) in expected.items():
        rule = alerts[name]
        assert (
            f"infleet:slo_burn_rate:rate{long} >= {burn:g}\nand\ninfleet:slo_burn_rate:rate{short} >= {burn:g}"
            in rule["expr"]
        )
        assert rule["labels"] == {"severity": severity}
        assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}
        anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
        assert rule["annotations"]["runbook_url"].split("#")[0].endswith("docs/runbooks.md")
        assert anchor in headings, f"docs/runbooks.md has no section for #{anchor}"


def test_prometheus_rule_wraps_the_groups_unchanged() -> None:
    files = rule_files()
    cr = prometheus_rule("infleet-slo-alerts", files["slo-alerts.yaml"], namespace="monitoring")
    assert cr["apiVersion"] == "monitoring.coreos.com/v1" and cr["kind"] == "PrometheusRule"
    assert cr["metadata"]["namespace"] == "monitoring"
    assert cr["spec"]["groups"] == files["slo-alerts.yaml"]["groups"]
