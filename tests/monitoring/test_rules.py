"""The generated rule files: valid for promtool, alerts that fire on real burns and only then, and documented."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from infleet.api import metrics as names
from infleet.monitoring.render import REPO, to_yaml
from infleet.monitoring.rule_tests import HAND_COMPUTED, RELAXED, STRICT, promtool_cases
from infleet.monitoring.rules import alert_rules, prometheus_rule, recording_rules, rule_files
from infleet.monitoring.slo import BURN_ALERTS, COST_ALERT, WINDOWS
from infleet.operator.api import BUDGET_PERIODS

CHART_RULES = sorted((REPO / "charts/infleet/rules").glob("*.yaml"))


def run(cmd: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_chart_rule_files_pass_promtool_check(promtool: str) -> None:
    assert [p.name for p in CHART_RULES] == ["slo-alerts.yaml", "slo-recording.yaml", "team-budgets.yaml"]
    out = run([promtool, "check", "rules", *map(str, CHART_RULES)])
    assert out.count("SUCCESS") == 3


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
@pytest.mark.parametrize(
    "case_file", ["burn-pages.yaml", "burn-tickets.yaml", "burn-below-budget.yaml", "team-budget-burn.yaml"]
)
def test_promtool_unit_tests(promtool: str, rule_test_dir: Path, case_file: str) -> None:
    """burn-pages: 14.4x fires the fast page within its hour (two objectives, two SLIs), 6x the slow page within
    6h, two deployments with different objectives under the same traffic alert each on its own objective with
    hand-computed budget left, and the cost alert fires on a deployment's own limit; burn-tickets: 3x and 1x within
    1d and 3d; burn-below-budget: 0.9x fires nothing in 3 days; team-budget-burn: a team's 50/80/100% budget
    alerts fire band by band."""
    out = run([promtool, "test", "rules", case_file], cwd=rule_test_dir)
    assert "SUCCESS" in out


def test_hand_computed_budget_arithmetic() -> None:
    """The promtool case's expected values, worked out here from the scenario rather than copied: 900 of 120,000
    requests missed."""
    for s in (RELAXED, STRICT):
        bad = s.bad_share * 1000 * s.burn_minutes
        total = 1000 * (s.healthy_minutes + s.burn_minutes)
        ratio = bad / total
        left, attained = HAND_COMPUTED[(s.namespace, s.deployment)]
        assert round((1 - ratio / round(1 - s.objective, 9)) * 1000) == left
        assert round((1 - ratio) * 10000) == attained


def test_promtool_catches_a_wrong_budget(promtool: str, rule_test_dir: Path, tmp_path: Path) -> None:
    """The budget check is not vacuous: budget left computed against a fleet-wide 99% instead of each
    deployment's own objective fails the two-deployment case."""
    for path in rule_test_dir.glob("*.yaml"):
        (tmp_path / path.name).write_text(path.read_text())
    recording = tmp_path / "slo-recording.yaml"
    text = recording.read_text()
    assert "expr: 1 - infleet:slo_objective:ratio" in text
    recording.write_text(
        text.replace("expr: 1 - infleet:slo_objective:ratio", "expr: 0.01 + 0 * infleet:slo_objective:ratio")
    )
    proc = subprocess.run([promtool, "test", "rules", "burn-pages.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "infleet:slo_error_budget_remaining:ratio" in proc.stdout + proc.stderr


def test_promtool_unit_tests_catch_a_wrong_threshold(promtool: str, rule_test_dir: Path, tmp_path: Path) -> None:
    """The page test is not vacuous: an alert that needs 14.5x misses a 14.4x burn and promtool says so."""
    for path in rule_test_dir.glob("*.yaml"):
        (tmp_path / path.name).write_text(path.read_text())
    alerts = tmp_path / "slo-alerts.yaml"
    alerts.write_text(alerts.read_text().replace(">= 14.4", ">= 14.5"))
    proc = subprocess.run([promtool, "test", "rules", "burn-pages.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "InfleetSLOBudgetBurnFast fires within 1h at 14.4x" in proc.stdout + proc.stderr


def test_slis_come_from_exact_counts_and_every_window_is_recorded() -> None:
    rules = {r["record"]: r["expr"] for r in recording_rules()}
    for window in WINDOWS:
        expr = rules[f"infleet:slo_error:ratio_rate{window}"]
        assert names.SLO_REQUESTS in expr and "_bucket" not in expr  # not read off histogram buckets
        assert "> 0" in expr and "* 0" in expr  # no NaN without requests, 0 (not nothing) without bad ones
        assert "group_left infleet:slo_error_budget:ratio" in rules[f"infleet:slo_burn_rate:rate{window}"]
    assert rules["infleet:slo_objective:ratio"] == f"max by (namespace, deployment) ({names.DEPLOYMENT_SLO_OBJECTIVE})"
    period = rules["infleet:slo_error:ratio_period"]
    for p in BUDGET_PERIODS:  # one term per period a spec may choose
        assert f"[{p}]" in period and f"== {int(p[:-1]) * 86400}" in period


def test_no_rule_holds_a_threshold_or_objective_constant() -> None:
    """Every deployment's own objective comes from the operator's series; the only numbers are the recipe's."""
    recipe = {f"{a.burn:g}" for a in BURN_ALERTS}
    for rule in recording_rules() + alert_rules():
        numbers = set(re.findall(r"(?<![\w\[.])\d+(?:\.\d+)?(?![\w\].])", rule["expr"]))
        allowed = recipe | {"0", "1", "0.0001"} | {str(int(p[:-1]) * 86400) for p in BUDGET_PERIODS}
        assert numbers <= allowed, (rule.get("record") or rule.get("alert"), numbers - allowed)


def test_alerts_follow_the_recipe_and_link_their_runbook() -> None:
    runbook = (REPO / "docs/runbooks.md").read_text()
    headings = {
        re.sub(r"[^a-z0-9-]", "", h.strip().lower().replace(" ", "-")) for h in re.findall(r"^## (.+)$", runbook, re.M)
    }
    alerts = {r["alert"]: r for r in alert_rules()}
    assert set(alerts) == {a.name for a in BURN_ALERTS} | {COST_ALERT}
    cost = alerts.pop(COST_ALERT)
    assert names.DEPLOYMENT_COST_LIMIT in cost["expr"] and cost["for"] == "15m"
    assert cost["annotations"]["runbook_url"].split("#", 1)[1] in headings
    expected = {
        "InfleetSLOBudgetBurnFast": (14.4, "1h", "5m", "critical"),
        "InfleetSLOBudgetBurnHigh": (6, "6h", "30m", "critical"),
        "InfleetSLOBudgetBurnSteady": (3, "1d", "2h", "warning"),
        "InfleetSLOBudgetBurnSlow": (1, "3d", "6h", "warning"),
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
