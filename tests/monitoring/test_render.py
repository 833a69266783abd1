"""Generated files match the code; dashboards, ConfigMaps and scrape configs have the shape their consumers need."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from infleet.monitoring.__main__ import main
from infleet.monitoring.dashboards import configmap, dashboards
from infleet.monitoring.scrape import file_sd_job, meta_label, pod_job, pod_target, prometheus_config


def test_chart_files_do_not_drift_from_the_code() -> None:
    assert main(["render", "--check"]) == 0


def test_check_reports_a_hand_edit(tmp_path: Path, capsys) -> None:
    assert main(["render", "--root", str(tmp_path)]) == 0
    assert main(["render", "--check", "--root", str(tmp_path)]) == 0
    board = tmp_path / "charts/infleet/dashboards/slo.json"
    board.write_text(board.read_text().replace("Deployment SLO", "edited by hand"))
    (tmp_path / "charts/infleet/rules/slo-alerts.yaml").unlink()
    assert main(["render", "--check", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "slo.json" in err and "slo-alerts.yaml" in err


def test_dashboards_filter_every_query_by_namespace_and_deployment() -> None:
    boards = dashboards()
    assert len({b["uid"] for b in boards.values()}) == len(boards)
    for name, board in boards.items():
        if name == "chargeback.json":
            continue  # per team, filtered by team first (its own test)
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert {"datasource", "namespace", "deployment"} <= set(variables)
        assert variables["deployment"]["includeAll"] and variables["deployment"]["multi"]
        exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
        exprs += [a["expr"] for a in board["annotations"]["list"] if "expr" in a]
        for expr in exprs:
            for selector in re.findall(r"\{([^}]*)\}", expr):
                if selector.startswith(("{", "namespace}", "deployment}", "sli}", "tier}", "alertname}")):
                    continue  # legend templates, not selectors
                assert 'namespace=~"$namespace"' in selector and 'deployment=~"$deployment"' in selector, expr
    titles = [p["title"] for p in boards["fleet-overview.json"]["panels"]]
    for needed in ("Replicas", "Tier", "$ / 1M tokens", "p99", "Error budget", "Queue", "Tokens", "KV-cache", "Prefix"):
        assert any(needed in t for t in titles), needed
    annotations = [a["name"] for a in boards["fleet-overview.json"]["annotations"]["list"]]
    assert {"Scale", "Tier change"} <= set(annotations)


SEL = 'namespace=~"$namespace",deployment=~"$deployment"'


def panel(board: dict, title: str) -> dict:
    return next(p for p in board["panels"] if p["title"] == title)


def test_slo_lines_are_each_deployments_own_objective_not_constants() -> None:
    """Every latency, attainment and cost panel draws its line from the operator's per-deployment objective series
    (filtered by the same variables), and holds no constant threshold."""
    boards = dashboards()
    checked = 0
    for board in boards.values():
        for p in board["panels"]:
            if p["type"] != "timeseries":
                continue
            unit = p["fieldConfig"]["defaults"]["unit"]
            steps = p["fieldConfig"]["defaults"]["thresholds"]["steps"]
            objectives = [t for t in p["targets"] if t["legendFormat"].startswith("SLO ")]
            if p["title"].startswith("p99 "):
                sli = {"p99 time to first token": "ttft", "p99 time per output token": "tpot"}.get(p["title"], "e2e")
                want = f'infleet_deployment_slo_threshold_seconds{{{SEL},sli="{sli}"}}'
            elif p["title"].startswith(("Requests within the SLO", "Attainment")):
                want = f"infleet:slo_objective:ratio{{{SEL}}}"
            elif p["title"] == "$ / 1M tokens":
                want = (
                    'infleet_deployment_max_cost_per_million_tokens{namespace=~"$namespace",deployment=~"$deployment"}'
                )
            else:  # budget spent at 0, the recipe's burn multiples, or no line: the same for every deployment
                assert unit != "s" and not objectives, p["title"]
                continue
            assert len(objectives) == 1 and want in objectives[0]["expr"], (p["title"], objectives)
            assert len(steps) == 1, f"{p['title']} has a constant threshold {steps}"
            assert p["fieldConfig"]["overrides"][0]["matcher"]["options"] == "/^SLO /"
            checked += 1
    assert checked == 3 + 3 + 2 + 1  # p99 x3 on each board, attainment x2, cost


def test_the_fleet_table_has_a_row_per_deployment_with_its_own_objective_and_budget() -> None:
    table = dashboards()["fleet-overview.json"]["panels"][0]
    assert table["type"] == "table" and table["gridPos"]["w"] == 24
    columns = list(table["transformations"][1]["options"]["renameByName"].values())
    assert columns == ["Objective", "Attainment (budget period)", "Budget left", "$ / 1M tokens", "$ / 1M limit",
                       "Replicas", "Tier"]  # fmt: skip
    assert table["transformations"][0]["id"] == "merge"
    assert all(t["instant"] and t["format"] == "table" for t in table["targets"])


def test_the_deployment_dashboard_shows_what_a_deployment_owner_asks() -> None:
    board = dashboards()["slo.json"]
    titles = [p["title"] for p in board["panels"]]
    for needed in ("Requests within the SLO", "Attainment over the budget period", "Error budget remaining",
                   "Burn rate 1h / 5m", "Burn rate 6h / 30m", "Burn rate 3d / 6h", "$ / 1M tokens", "Spend per hour",
                   "Replicas", "Tier"):  # fmt: skip
        assert any(t.startswith(needed) for t in titles), needed
    assert panel(board, "Tier (current, desired)")["type"] == "state-timeline"
    # desired against actual: what the autoscaler decided (applied or, in advisory mode, not) beside what runs
    tier_exprs = " ".join(t["expr"] for t in panel(board, "Tier (current, desired)")["targets"])
    replica_exprs = " ".join(t["expr"] for t in panel(board, "Replicas (current, desired)")["targets"])
    assert "infleet_deployment_desired_tier_info" in tier_exprs and "infleet_deployment_tier_info" in tier_exprs
    assert "infleet_deployment_desired_replicas" in replica_exprs and "infleet_deployment_replicas{" in replica_exprs
    datasources = {json.dumps(t["datasource"]) for p in board["panels"] for t in p["targets"]}
    assert datasources == {json.dumps({"type": "prometheus", "uid": "${datasource}"})}


def test_configmap_is_picked_up_by_the_grafana_sidecar() -> None:
    cm = configmap("slo.json", dashboards()["slo.json"], namespace="monitoring")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["slo.json"])["uid"] == "infleet-slo"
    for name, board in dashboards().items():  # what Grafana's file provisioning and sidecar load as they are
        assert board["uid"] and board["title"] and board["schemaVersion"] >= 36, name
        assert "id" not in board, f"{name}: a fixed id collides across Grafana instances"
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), name


def test_pod_job_maps_pod_metadata_to_target_labels() -> None:
    job = pod_job()
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    targets = {r.get("target_label"): r["source_labels"] for r in job["relabel_configs"]}
    assert targets["namespace"] == ["__meta_kubernetes_namespace"]
    assert targets["pod"] == ["__meta_kubernetes_pod_name"]
    assert targets["deployment"] == ["__meta_kubernetes_pod_label_infleet_dev_deployment"]
    assert targets["tier"] == ["__meta_kubernetes_pod_label_infleet_dev_tier"]
    keep = job["relabel_configs"][0]
    assert keep == {
        "source_labels": [meta_label("annotation", "prometheus.io/scrape")],
        "regex": "true",
        "action": "keep",
    }
    assert keep["source_labels"] == ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"]


def test_pod_job_inside_and_outside_the_cluster() -> None:
    """Debian's promtool is built without Kubernetes discovery, so this job's shape is checked here, not by promtool."""
    outside = pod_job(kubeconfig="/etc/infleet/kubeconfig", namespaces=["ml"])
    assert outside["kubernetes_sd_configs"] == [
        {"role": "pod", "kubeconfig_file": "/etc/infleet/kubeconfig", "namespaces": {"names": ["ml"]}}
    ]
    assert "kubeconfig_file" not in pod_job()["kubernetes_sd_configs"][0]
    assert pod_job()["honor_labels"] is True


def _pod(annotations: dict[str, str], phase: str = "Running", ip: str | None = "127.0.5.3") -> dict[str, object]:
    return {
        "metadata": {"name": "chat-7d9", "namespace": "ml", "annotations": annotations,
                     "labels": {"infleet.dev/deployment": "chat", "infleet.dev/tier": "int8"}},
        "status": {"phase": phase, "podIP": ip},
    }  # fmt: skip


def test_pod_target_gives_the_labels_discovery_would() -> None:
    target = pod_target(_pod({"prometheus.io/scrape": "true", "prometheus.io/port": "8000"}))
    assert target == {
        "targets": ["127.0.5.3:8000"],
        "labels": {"namespace": "ml", "pod": "chat-7d9", "deployment": "chat", "tier": "int8"},
    }
    custom = pod_target(_pod({"prometheus.io/scrape": "true", "prometheus.io/path": "/m"}), default_port=9100)
    assert (
        custom is not None and custom["targets"] == ["127.0.5.3:9100"] and custom["labels"]["__metrics_path__"] == "/m"
    )
    assert pod_target(_pod({})) is None
    assert pod_target(_pod({"prometheus.io/scrape": "true"}, phase="Pending")) is None
    assert pod_target(_pod({"prometheus.io/scrape": "true"}, ip=None)) is None


def test_file_sd_config_passes_promtool(promtool: str, tmp_path: Path) -> None:
    targets = tmp_path / "pods.json"
    targets.write_text(json.dumps([pod_target(_pod({"prometheus.io/scrape": "true"}))]))
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(prometheus_config([file_sd_job([str(targets)])], rule_files=[])))
    proc = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_chargeback_filters_every_query_by_team_or_deployment() -> None:
    board = dashboards()["chargeback.json"]
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource", "team", "namespace", "deployment"]
    titles = [p["title"] for p in board["panels"]]
    for needed in ("this month", "Spend per hour", "Tokens per minute", "by team, deployment and model", "refused"):
        assert any(needed in t for t in titles), needed
    for expr in [t["expr"] for p in board["panels"] for t in p["targets"]]:
        for selector in re.findall(r"\{([^}]*)\}", expr):
            if selector.startswith(("{", "team}", "kind}", "reason}", "namespace}", "deployment}")):
                continue  # legend templates
            assert 'team=~"$team"' in selector or 'deployment=~"$deployment"' in selector, expr
