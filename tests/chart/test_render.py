"""`helm lint` and `helm template` over a matrix of values, asserting on the rendered objects; bad values are
refused with the schema's message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from infleet.autoscaler.cost import DEFAULT_GPU_PRICES

from .helm import CHART, RELEASE, helm, named, of_kind, permissions, pod_spec, render, set_args

MATRIX: dict[str, dict[str, Any]] = {
    "defaults": {},
    "monitoring-on": {"monitoring": {"prometheusOperator": True, "selectorLabels": {"release": "prom"}}},
    "monitoring-off": {
        "monitoring": {"prometheusOperator": False, "prometheusRule": False, "dashboards": {"enabled": False}}
    },
    "operator-2-replicas": {"operator": {"replicas": 2, "leaderElection": True}},
    "operator-standalone": {"operator": {"replicas": 1, "leaderElection": False}},
    "gateway-off": {"gateway": {"enabled": False}},
    "replica-device": {"operator": {"replicaDevice": "cpu"}},
    "custom-prices": {"gpuPrices": {"NVIDIA-L4": 0.55, "NVIDIA-B200-180GB": 9.5}},
    "uninstall-deletes": {"uninstall": {"deleteDeployments": True, "timeoutSeconds": 120}},
    "teams": {
        "gateway": {
            "teams": {
                "research": {"apiKeys": ["sk-r"], "namespaces": ["research"], "outputTokensPerMinute": 500},
                "web": {"monthlyBudgetDollars": 20.5},
            }
        },
        "operator": {"prometheusUrl": "http://prometheus.monitoring:9090"},
    },
    "teams-secret": {"gateway": {"teamsSecret": "my-teams"}},
    "watch-namespaces": {
        "operator": {"watchNamespaces": ["team-a", "team-b"], "leaderElection": True},
        "gateway": {"watchNamespaces": ["team-a"], "apiKeys": {"fromSecrets": True}},
    },
}


def merged(values: dict[str, Any]) -> dict[str, Any]:
    """Values as helm sees them: the chart's defaults with `values` deep-merged on top."""
    base: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())

    def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        out = dict(a)
        for k, v in b.items():
            out[k] = merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return out

    return merge(base, values)


def rendered(case: str) -> list[dict[str, Any]]:
    values = MATRIX[case]
    # --set-json replaces whole top-level maps, so hand helm the merged values of each case
    return render({k: v for k, v in merged(values).items() if k in values})


def test_lint_passes_strict() -> None:
    proc = helm("lint", "--strict", str(CHART))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_every_pod_runs_locked_down(case: str) -> None:
    docs = rendered(case)
    workloads = of_kind(docs, "Deployment")
    assert workloads, "no Deployment rendered"
    for doc in workloads:
        spec = pod_spec(doc)
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["serviceAccountName"], doc["metadata"]["name"]
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, c["name"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, c["name"]
            # the local launcher runs infleet/* images as processes: the command must be explicit
            assert c["command"][:2] == ["python", "-m"] and c["command"][3] == "run", c["command"]
            assert c["image"].endswith(":0.1.0")
            assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_every_object_is_labelled(case: str) -> None:
    for doc in rendered(case):
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE, doc["metadata"]["name"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "infleet-0.1.0"
        if doc["kind"] == "Deployment":
            selector = doc["spec"]["selector"]["matchLabels"]
            assert selector.items() <= doc["spec"]["template"]["metadata"]["labels"].items()


def test_defaults() -> None:
    docs = rendered("defaults")
    op = named(docs, "Deployment", "-operator")
    assert op["spec"]["replicas"] == 2  # one works, one stands by
    c = pod_spec(op)["containers"][0]
    assert c["command"] == ["python", "-m", "infleet.operator", "run"]
    assert c["args"] == ["--metrics-port=8081", "--health-port=8080", "--peering"]  # every namespace, with peering
    assert {"name": "POD_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in c["env"]
    assert c["image"] == "infleet/operator:0.1.0"
    annotations = op["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "8081"
    gw = named(docs, "Deployment", "-gateway")
    gc = pod_spec(gw)["containers"][0]
    assert gc["command"] == ["python", "-m", "infleet.gateway", "run"] and "--port=8080" in gc["args"]
    assert gc["image"] == "infleet/gateway:0.1.0"
    svc = named(docs, "Service", "-gateway")
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    assert svc["spec"]["selector"] == gw["spec"]["selector"]["matchLabels"]
    # without the Prometheus Operator's API: no PodMonitor or PrometheusRule, but the dashboards
    assert not of_kind(docs, "PodMonitor") and not of_kind(docs, "PrometheusRule")
    dashboards = [d for d in of_kind(docs, "ConfigMap") if "grafana_dashboard" in d["metadata"]["labels"]]
    assert sorted(next(iter(d["data"])) for d in dashboards) == ["chargeback.json", "fleet-overview.json", "slo.json"]
    for d in dashboards:
        assert d["metadata"]["labels"]["grafana_dashboard"] == "1"
        name, body = next(iter(d["data"].items()))
        assert json.loads(body) == json.loads((CHART / "dashboards" / name).read_text())


def test_default_prices_follow_the_cost_model() -> None:
    cm = named(rendered("defaults"), "ConfigMap", "-gpus")
    assert json.loads(cm["data"]["gpu-prices.json"]) == DEFAULT_GPU_PRICES
    catalogue = json.loads(cm["data"]["accelerators.json"])
    assert set(catalogue) == set(DEFAULT_GPU_PRICES)
    op = pod_spec(named(rendered("defaults"), "Deployment", "-operator"))["containers"][0]
    env = {e["name"]: e for e in op["env"]}
    assert env["INFLEET_GPU_PRICES"]["valueFrom"]["configMapKeyRef"] == {
        "name": cm["metadata"]["name"],
        "key": "gpu-prices.json",
    }


def test_model_stores_and_cache_reach_the_operator() -> None:
    cache = {"claimName": "m", "size": "500Gi", "storageClass": "fast"}
    models = {"hfEndpoint": "http://hub.internal", "s3Endpoint": "http://s3.internal:8333", "cache": cache}
    op = pod_spec(named(render({"models": models}), "Deployment", "-operator"))["containers"][0]
    env = {e["name"]: e.get("value") for e in op["env"]}
    assert env["HF_ENDPOINT"] == "http://hub.internal" and env["AWS_ENDPOINT_URL"] == "http://s3.internal:8333"
    assert env["INFLEET_MODEL_CACHE_CLAIM"] == "m" and "AWS_REGION" not in env  # empty values are not set
    assert env["INFLEET_MODEL_CACHE_SIZE"] == "500Gi" and env["INFLEET_MODEL_CACHE_STORAGE_CLASS"] == "fast"
    assert env["INFLEET_MODEL_CACHE_ACCESS_MODE"] == "ReadWriteMany"  # the default
    defaults = pod_spec(named(rendered("defaults"), "Deployment", "-operator"))["containers"][0]
    unset = {"HF_ENDPOINT", "AWS_ENDPOINT_URL", "INFLEET_MODEL_CACHE_CLAIM", "INFLEET_MODEL_CACHE_SIZE"}
    assert not unset & {e["name"] for e in defaults["env"]}


def test_custom_prices() -> None:
    cm = named(rendered("custom-prices"), "ConfigMap", "-gpus")
    prices = json.loads(cm["data"]["gpu-prices.json"])
    assert prices["NVIDIA-L4"] == 0.55 and prices["NVIDIA-B200-180GB"] == 9.5
    assert prices["NVIDIA-H100-80GB-HBM3"] == DEFAULT_GPU_PRICES["NVIDIA-H100-80GB-HBM3"]


def test_operator_two_replicas_elect_a_leader() -> None:
    docs = rendered("operator-2-replicas")
    op = named(docs, "Deployment", "-operator")
    assert op["spec"]["replicas"] == 2
    assert "--peering" in pod_spec(op)["containers"][0]["args"]
    role = named(docs, "ClusterRole", "-operator")
    assert ("ClusterRole", "kopf.dev", "clusterkopfpeerings", "patch") in permissions(role["rules"], "ClusterRole")
    # the peering CRDs travel in crds/ (generated by `infleet crds render`)
    crds = [yaml.safe_load_all(p.read_text()) for p in sorted((CHART / "crds").glob("*.yaml"))]
    names = {d["metadata"]["name"] for docs_ in crds for d in docs_ if d}
    assert {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev", "inferencedeployments.infleet.dev"} <= names


def test_replica_device_reaches_the_operator() -> None:
    args = pod_spec(named(rendered("replica-device"), "Deployment", "-operator"))["containers"][0]["args"]
    assert "--replica-device=cpu" in args
    defaults = pod_spec(named(rendered("defaults"), "Deployment", "-operator"))["containers"][0]["args"]
    assert not any(a.startswith("--replica-device") for a in defaults)  # each deployment's accelerator


def test_uninstall_hook_checks_for_deployments_with_only_list_and_delete() -> None:
    """The pre-delete hook: refuses by default, deletes first with uninstall.deleteDeployments; its rights are
    exactly listing and deleting InferenceDeployments, cluster-wide or in each watched namespace."""
    job = named(rendered("defaults"), "Job", "-uninstall")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
    assert "hook-failed" in job["metadata"]["annotations"]["helm.sh/hook-output-log-policy"]  # helm prints why
    c = pod_spec(job)["containers"][0]
    assert c["command"] == ["python", "-m", "infleet.operator", "uninstall-check"]
    assert "--delete-deployments" not in c["args"] and f"--release={RELEASE}" in c["args"]
    deleting = pod_spec(named(rendered("uninstall-deletes"), "Job", "-uninstall"))["containers"][0]["args"]
    assert "--delete-deployments" in deleting and "--timeout=120" in deleting
    rights = permissions(named(rendered("defaults"), "ClusterRole", "-uninstall")["rules"], "ClusterRole")
    assert sorted(rights) == [("ClusterRole", "infleet.dev", "inferencedeployments", v) for v in ("delete", "list")]
    scoped = rendered("watch-namespaces")
    roles = [d for d in of_kind(scoped, "Role") if d["metadata"]["name"].endswith("-uninstall")]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert not [d for d in of_kind(scoped, "ClusterRole") if d["metadata"]["name"].endswith("-uninstall")]
    args = pod_spec(named(scoped, "Job", "-uninstall"))["containers"][0]["args"]
    assert args[:2] == ["--namespace=team-a", "--namespace=team-b"]


def test_standalone_operator_has_no_peering_rights() -> None:
    docs = rendered("operator-standalone")
    assert "--peering" not in pod_spec(named(docs, "Deployment", "-operator"))["containers"][0]["args"]
    groups = {g for r in named(docs, "ClusterRole", "-operator")["rules"] for g in r["apiGroups"]}
    assert "kopf.dev" not in groups


def test_gateway_off() -> None:
    docs = rendered("gateway-off")
    assert not [d for d in docs if "gateway" in d["metadata"]["name"]]
    assert named(docs, "Deployment", "-operator")


def test_monitoring_on() -> None:
    docs = rendered("monitoring-on")
    monitors = {d["metadata"]["name"].rsplit("-", 1)[1]: d for d in of_kind(docs, "PodMonitor")}
    assert sorted(monitors) == ["gateway", "operator", "runtime"]
    runtime = monitors["runtime"]["spec"]
    assert runtime["selector"]["matchLabels"] == {
        "app.kubernetes.io/managed-by": "infleet",
        "app.kubernetes.io/name": "infleet-runtime",
    }
    assert runtime["namespaceSelector"] == {"any": True}
    assert monitors["operator"]["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    for m in monitors.values():
        assert m["metadata"]["labels"]["release"] == "prom"
    # plain scrape annotations give way to the PodMonitors
    for d in of_kind(docs, "Deployment"):
        assert "prometheus.io/scrape" not in (d["spec"]["template"]["metadata"].get("annotations") or {})
    rules = {d["metadata"]["name"]: d for d in of_kind(docs, "PrometheusRule")}
    assert sorted(rules) == [
        f"{RELEASE}-infleet-slo-alerts",
        f"{RELEASE}-infleet-slo-recording",
        f"{RELEASE}-infleet-team-budgets",
    ]
    for name, doc in rules.items():
        source = yaml.safe_load((CHART / "rules" / (name.split("infleet-", 1)[1] + ".yaml")).read_text())
        assert doc["spec"] == source  # included raw: Prometheus' {{ $labels }} templates survive helm
    alerts = rules[f"{RELEASE}-infleet-slo-alerts"]["spec"]["groups"][0]["rules"]
    assert "{{ $labels.namespace }}" in alerts[0]["annotations"]["summary"]


def test_monitoring_auto_follows_the_cluster_api() -> None:
    docs = render(None, "--api-versions", "monitoring.coreos.com/v1")
    assert len(of_kind(docs, "PodMonitor")) == 3 and len(of_kind(docs, "PrometheusRule")) == 3


def test_monitoring_off() -> None:
    docs = rendered("monitoring-off")
    assert not of_kind(docs, "PodMonitor") and not of_kind(docs, "PrometheusRule")
    assert not [d for d in of_kind(docs, "ConfigMap") if "grafana_dashboard" in d["metadata"]["labels"]]


def test_cluster_wide_rbac_is_exactly_what_the_operator_uses() -> None:
    docs = rendered("defaults")
    assert not of_kind(docs, "Role")
    got = set(permissions(named(docs, "ClusterRole", "-operator")["rules"], "ClusterRole"))
    core = {("", "nodes", v) for v in ("list", "watch")} | {
        ("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("list", "watch")
    }
    assert {(g, r, v) for _, g, r, v in got} >= core
    verbs = {v for _, _, _, v in got}
    assert verbs <= {"get", "list", "watch", "create", "patch", "delete"}  # never update, deletecollection, *
    assert not any(r in ("secrets", "configmaps", "*") for _, _, r, _ in got)
    binding = named(docs, "ClusterRoleBinding", "-operator")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": f"{RELEASE}-infleet-operator", "namespace": "infleet-system"}
    ]
    gw = permissions(named(docs, "ClusterRole", "-gateway")["rules"], "ClusterRole")
    assert sorted(gw) == sorted(
        [
            ("ClusterRole", "infleet.dev", "inferencedeployments", "list"),
            ("ClusterRole", "infleet.dev", "inferencedeployments", "watch"),
            ("ClusterRole", "infleet.dev", "inferencedeployments", "patch"),
            ("ClusterRole", "discovery.k8s.io", "endpointslices", "list"),
            ("ClusterRole", "discovery.k8s.io", "endpointslices", "watch"),
        ]
    )


def test_watched_namespaces_keep_rights_in_them() -> None:
    docs = rendered("watch-namespaces")
    cluster = {(g, r) for _, g, r, _ in permissions(named(docs, "ClusterRole", "-operator")["rules"], "ClusterRole")}
    assert cluster == {("", "nodes"), ("apiextensions.k8s.io", "customresourcedefinitions"), ("", "namespaces")}
    roles = [d for d in of_kind(docs, "Role") if d["metadata"]["name"].endswith("-operator")]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        perms = permissions(role["rules"], "Role")
        assert ("Role", "kopf.dev", "kopfpeerings", "patch") in perms
        assert ("Role", "apps", "deployments", "create") in perms
    args = pod_spec(named(docs, "Deployment", "-operator"))["containers"][0]["args"]
    assert args[:2] == ["--namespace=team-a", "--namespace=team-b"] and "--peering" in args
    assert not [d for d in of_kind(docs, "ClusterRole") if d["metadata"]["name"].endswith("-gateway")]
    keys = named(docs, "Role", "-gateway-api-keys")
    assert keys["metadata"]["namespace"] == "infleet-system"
    assert keys["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "watch"]}]
    gargs = pod_spec(named(docs, "Deployment", "-gateway"))["containers"][0]["args"]
    assert "--api-key-secrets" in gargs and "--secrets-namespace=infleet-system" in gargs


BAD_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    "negative price": ({"gpuPrices": {"NVIDIA-L4": -1}}, "at '/gpuPrices/NVIDIA-L4': minimum"),
    "price not a number": ({"gpuPrices": {"NVIDIA-L4": "cheap"}}, "at '/gpuPrices/NVIDIA-L4'"),
    "zero operator replicas": ({"operator": {"replicas": 0}}, "at '/operator/replicas'"),
    "two replicas without leader election": (
        {"operator": {"replicas": 2, "leaderElection": False}},
        "at '/operator/leaderElection'",
    ),
    "typo in a key": ({"operator": {"replicaz": 2}}, "additional properties 'replicaz' not allowed"),
    "bad service type": ({"gateway": {"service": {"type": "Ingress"}}}, "at '/gateway/service/type'"),
    "bad namespace name": ({"operator": {"watchNamespaces": ["Team_A"]}}, "at '/operator/watchNamespaces/0'"),
    "root allowed": ({"podSecurityContext": {"runAsNonRoot": False}}, "at '/podSecurityContext/runAsNonRoot'"),
    "privilege escalation": (
        {"containerSecurityContext": {"allowPrivilegeEscalation": True}},
        "at '/containerSecurityContext/allowPrivilegeEscalation'",
    ),
    "bad monitoring mode": ({"monitoring": {"prometheusOperator": "maybe"}}, "at '/monitoring/prometheusOperator'"),
    "bad replica device": ({"operator": {"replicaDevice": "--cpu x"}}, "at '/operator/replicaDevice'"),
    "store endpoint without a scheme": ({"models": {"s3Endpoint": "minio:9000"}}, "at '/models/s3Endpoint'"),
    "bad cache claim name": ({"models": {"cache": {"claimName": "Models_Cache"}}}, "at '/models/cache/claimName'"),
    "bad cache size": ({"models": {"cache": {"size": "lots"}}}, "at '/models/cache/size'"),
    "bad team limit": (
        {"gateway": {"teams": {"web": {"outputTokensPerMinute": 0}}}},
        "at '/gateway/teams/web/outputTokensPerMinute'",
    ),
    "typo in a team": ({"gateway": {"teams": {"web": {"budget": 5}}}}, "additional properties 'budget' not allowed"),
}


def bad_values_file(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_values_are_refused_with_the_schema_message(case: str, tmp_path: Path) -> None:
    values, message = BAD_VALUES[case]
    path = bad_values_file(tmp_path, values)
    for args in (["template", RELEASE, str(CHART)], ["lint", str(CHART)]):
        proc = helm(*args, "--values", str(path))
        assert proc.returncode != 0, f"helm {args[0]} accepted {values}"
        out = proc.stdout + proc.stderr
        assert "values don't meet the specifications of the schema" in out and message in out, out


def test_the_local_fleets_code_digest_is_a_string_to_helm(monkeypatch: pytest.MonkeyPatch) -> None:
    """`Stack.on_fleet` passes the code digest with `--set`, which reads all-digit text as a number: even a digest
    of only digits must render as the string annotation the schema wants."""
    from infleet.cluster import stack

    class Digits:
        def update(self, _: bytes) -> None:
            pass

        def hexdigest(self) -> str:
            return "1234567890" * 4

    monkeypatch.setattr(stack.hashlib, "sha256", Digits)
    code = stack.code_digest()
    docs = render(None, "--set", f"operator.podAnnotations.infleet\\.dev/code={code}")
    annotations = named(docs, "Deployment", "-operator")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["infleet.dev/code"] == code and code.endswith("1234567890123456")


def test_set_json_arguments_are_typed() -> None:
    assert set_args({"operator": {"replicas": 2}}) == ["--set-json", 'operator={"replicas": 2}']


def test_cluster_wide_and_per_namespace_rbac_grant_the_same() -> None:
    """The RBAC proof runs the operator per namespace (the fleet is shared); a cluster-wide install must grant
    the very same rules, with the cluster-scoped peering object instead of the namespaced one."""
    wide = rendered("operator-2-replicas")
    narrow = rendered("watch-namespaces")
    wide_rules = {(g, r, v) for _, g, r, v in permissions(named(wide, "ClusterRole", "-operator")["rules"], "x")}
    narrow_cluster = permissions(named(narrow, "ClusterRole", "-operator")["rules"], "x")
    role = next(d for d in of_kind(narrow, "Role") if d["metadata"]["name"].endswith("-operator"))
    narrow_rules = {(g, r, v) for _, g, r, v in narrow_cluster + permissions(role["rules"], "x")}
    swap = {"kopfpeerings": "clusterkopfpeerings"}
    translated = {(g, swap.get(r, r), v) for g, r, v in narrow_rules if r != "namespaces"}
    assert translated == wide_rules


def test_gateway_has_no_single_point_of_failure() -> None:
    docs = render()
    gw = named(docs, "Deployment", "-gateway")
    assert gw["spec"]["replicas"] == 2
    selector = gw["spec"]["selector"]["matchLabels"]
    pdb = named(docs, "PodDisruptionBudget", "-gateway")
    assert pdb["spec"] == {"minAvailable": 1, "selector": {"matchLabels": selector}}
    spread = pod_spec(gw)["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    assert all(
        c["labelSelector"]["matchLabels"] == selector and c["whenUnsatisfiable"] == "ScheduleAnyway" for c in spread
    )
    assert not of_kind(docs, "HorizontalPodAutoscaler")
    # one replica asked for: a PDB of minAvailable 1 would block every drain, so there is none
    assert not of_kind(render({"gateway": merged({"gateway": {"replicas": 1}})["gateway"]}), "PodDisruptionBudget")


def test_gateway_autoscaling_replaces_the_replica_count() -> None:
    gateway = merged({"gateway": {"autoscaling": {"enabled": True, "maxReplicas": 8}}})["gateway"]
    docs = render({"gateway": gateway})
    gw = named(docs, "Deployment", "-gateway")
    assert "replicas" not in gw["spec"]
    hpa = named(docs, "HorizontalPodAutoscaler", "-gateway")
    assert hpa["spec"]["scaleTargetRef"]["name"] == gw["metadata"]["name"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    assert named(docs, "PodDisruptionBudget", "-gateway")


def test_helm_test_lists_models_through_the_gateway() -> None:
    docs = render()
    pod = named(docs, "Pod", "-test-models")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    container = pod["spec"]["containers"][0]
    svc = named(docs, "Service", "-gateway")
    assert f"{svc['metadata']['name']}.infleet-system.svc:80/v1/models" in container["command"][2]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True and pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_service_accounts_carry_cloud_iam_annotations() -> None:
    role = {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/infleet"}
    values = merged(
        {"operator": {"serviceAccount": {"annotations": role}}, "gateway": {"serviceAccount": {"annotations": role}}}
    )
    docs = render({"operator": values["operator"], "gateway": values["gateway"]})
    for suffix in ("-operator", "-gateway"):
        assert named(docs, "ServiceAccount", suffix)["metadata"]["annotations"] == role


def test_chart_refuses_clusters_older_than_the_crd_needs() -> None:
    proc = helm("template", RELEASE, str(CHART), "--kube-version", "1.29.0")
    assert proc.returncode != 0 and "kubeVersion" in proc.stderr, proc.stderr
    assert render(None, "--kube-version", "1.30.0")


def test_alert_severities_default_to_what_alertmanager_routes_and_can_be_renamed() -> None:
    def severities(values: dict[str, Any]) -> dict[str, str]:
        docs = render(values, "--api-versions", "monitoring.coreos.com/v1")
        alerts = named(docs, "PrometheusRule", "-slo-alerts")["spec"]["groups"][0]["rules"]
        return {a["alert"]: a["labels"]["severity"] for a in alerts}

    default = severities({})
    assert default["InfleetSLOBudgetBurnFast"] == default["InfleetSLOBudgetBurnHigh"] == "critical"
    assert default["InfleetSLOBudgetBurnSlow"] == default["InfleetCostAboveBudget"] == "warning"
    monitoring = merged({"monitoring": {"alertSeverities": {"page": "page", "ticket": "ticket"}}})["monitoring"]
    renamed = severities({"monitoring": monitoring})
    assert renamed == {name: {"critical": "page", "warning": "ticket"}[s] for name, s in default.items()}


def pod_labels_of(docs: list[dict[str, Any]], suffix: str) -> dict[str, str]:
    """The selector of the Deployment named `suffix`: the labels its pods carry."""
    return dict(named(docs, "Deployment", suffix)["spec"]["selector"]["matchLabels"])


def test_teams_reach_the_gateway_as_a_mounted_secret_it_can_parse() -> None:
    import base64

    from infleet.gateway.teams import Teams

    docs = rendered("teams")
    secret = named(docs, "Secret", "-gateway-teams")
    teams = Teams.parse(yaml.safe_load(base64.b64decode(secret["data"]["teams.yaml"])))
    assert sorted(teams.teams) == ["research", "web"]
    assert teams.teams["research"].output_tokens_per_minute == 500 and teams.teams["web"].monthly_budget_dollars == 20.5
    pod = pod_spec(named(docs, "Deployment", "-gateway"))
    assert "--teams-file=/etc/infleet/teams/teams.yaml" in pod["containers"][0]["args"]
    assert "--prometheus-url=http://prometheus.monitoring:9090" in pod["containers"][0]["args"]  # the fleet's spend
    peers = named(docs, "Service", "-gateway-peers")  # headless: DNS answers with every ready gateway pod
    assert peers["spec"]["clusterIP"] == "None" and peers["spec"]["selector"] == pod_labels_of(docs, "-gateway")
    port = peers["spec"]["ports"][0]["port"]
    assert (
        f"--peers={peers['metadata']['name']}.{peers['metadata']['namespace']}.svc:{port}"
        in pod["containers"][0]["args"]
    )
    volume = next(v for v in pod["volumes"] if v["name"] == "teams")
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    # an existing Secret instead: mounted, none rendered; no teams: nothing at all
    docs = rendered("teams-secret")
    assert not [d for d in of_kind(docs, "Secret") if d["metadata"]["name"].endswith("-gateway-teams")]
    pod = pod_spec(named(docs, "Deployment", "-gateway"))
    assert next(v for v in pod["volumes"] if v["name"] == "teams")["secret"]["secretName"] == "my-teams"
    pod = pod_spec(named(rendered("defaults"), "Deployment", "-gateway"))
    assert not any("--teams-file" in a or "--peers" in a for a in pod["containers"][0]["args"])
    assert not [d for d in of_kind(rendered("defaults"), "Service") if d["metadata"]["name"].endswith("-gateway-peers")]
