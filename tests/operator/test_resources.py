"""The objects a spec turns into: pure functions, checked field by field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from infleet.api import models
from infleet.operator import api, resources
from infleet.operator.resources import Owner

from .specs import good_spec

OWNER = Owner("llama", "serving", "uid-1")
H100 = "NVIDIA-H100-80GB-HBM3"


def spec_of(**overrides: Any) -> api.InferenceDeploymentSpec:
    return api.InferenceDeploymentSpec.model_validate(good_spec(**overrides))


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_single_node_replica_is_a_deployment() -> None:
    spec = spec_of(accelerator={"type": H100}, parallelism={"tensor": 4}, replicas=3)
    want = resources.desired(spec, OWNER, "fp8", gpus_per_node=8)
    assert not want.layout.grouped and want.layout.gpus_per_pod == 4
    kinds = sorted(o["kind"] for o in want.objects)
    assert kinds == ["Deployment", "PodDisruptionBudget", "Service"]
    dep = by_kind(want.objects, "Deployment")[0]
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["resources"]["requests"]["nvidia.com/gpu"] == "4" == c["resources"]["limits"]["nvidia.com/gpu"]
    term = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert term["matchExpressions"] == [{"key": "nvidia.com/gpu.product", "operator": "In", "values": [H100]}]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["ports"][0]["containerPort"] == 8000
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    assert ann == {"prometheus.io/scrape": "true", "prometheus.io/port": "8000", "prometheus.io/path": "/metrics"}


@pytest.mark.parametrize(
    ("replicas", "tensor", "budget"),
    [(1, 1, False), (2, 1, True), (1, 16, True), (0, 1, False)],  # tensor 16 on 8-GPU nodes: a group of 2 pods
)
def test_a_disruption_budget_only_over_more_than_one_pod(replicas: int, tensor: int, budget: bool) -> None:
    spec = spec_of(accelerator={"type": H100}, parallelism={"tensor": tensor}, replicas=replicas)
    want = resources.desired(spec, OWNER, "bf16", gpus_per_node=8)
    assert bool(by_kind(want.objects, "PodDisruptionBudget")) is budget


def test_every_object_is_labelled_and_owned() -> None:
    for spec, gpn in (
        (spec_of(), 1),
        (spec_of(accelerator={"type": H100}, parallelism={"tensor": 8, "pipeline": 2}), 8),
    ):
        for obj in resources.desired(spec, OWNER, "bf16", gpn).objects:
            labels = obj["metadata"]["labels"]
            assert labels["app.kubernetes.io/name"] == "infleet-runtime"
            assert labels["app.kubernetes.io/instance"] == "llama"
            assert labels["app.kubernetes.io/managed-by"] == "infleet"
            assert labels["infleet.dev/deployment"] == "llama" and labels["infleet.dev/tier"] == "bf16"
            (ref,) = obj["metadata"]["ownerReferences"]
            assert ref == {
                "apiVersion": "infleet.dev/v1alpha1",
                "kind": "InferenceDeployment",
                "name": "llama",
                "uid": "uid-1",
                "controller": True,
                "blockOwnerDeletion": True,
            }
            assert obj["metadata"]["namespace"] == "serving"


def test_infleet_engine_command() -> None:
    spec = spec_of(
        runtime={"maxBatchTokens": 4096, "maxModelLen": 2048}, parallelism={"tensor": 2, "pipeline": 1}, replicas=1
    )
    dep = by_kind(resources.desired(spec, OWNER, "int8", 8).objects, "Deployment")[0]
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == f"infleet/runtime:{resources.infleet_version()}"
    cmd = c["command"]
    assert cmd[:5] == ["python", "-m", "infleet.runtime", "serve", "--model"]
    flags = dict(zip(cmd[4::2], cmd[5::2], strict=False))
    # a remote model is fetched by the init container; the engine loads the cache entry
    entry = models.entry_name("hf://HuggingFaceTB/SmolLM2-135M-Instruct", None)
    assert flags["--model"] == f"/model-cache/{entry}"
    assert flags["--served-name"] == "smollm2" and flags["--tier"] == "int8"
    assert flags["--tensor-parallel"] == "2" and flags["--pipeline-parallel"] == "1"
    assert flags["--max-batch-tokens"] == "4096" and flags["--max-model-len"] == "2048" and flags["--port"] == "8000"


def test_speculative_decoding_becomes_engine_flags() -> None:
    speculative = {"method": "ngram", "numTokens": 3, "maxBatchSize": 2}
    dep = by_kind(
        resources.desired(spec_of(runtime={"speculative": speculative}), OWNER, "int8", 8).objects, "Deployment"
    )
    cmd = dep[0]["spec"]["template"]["spec"]["containers"][0]["command"]
    flags = dict(zip(cmd[4::2], cmd[5::2], strict=False))
    assert flags["--speculative-method"] == "ngram" and flags["--speculative-num-tokens"] == "3"
    assert flags["--speculative-max-batch-size"] == "2"
    plain = by_kind(resources.desired(spec_of(), OWNER, "int8", 8).objects, "Deployment")[0]
    assert not any(a.startswith("--speculative") for a in plain["spec"]["template"]["spec"]["containers"][0]["command"])
    vllm = spec_of(runtime={"engine": "vllm", "speculative": {"method": "ngram"}})
    cmd = by_kind(resources.desired(vllm, OWNER, "bf16", 8).objects, "Deployment")[0]["spec"]["template"]["spec"][
        "containers"
    ][0]["command"]
    assert json.loads(cmd[cmd.index("--speculative-config") + 1]) == {"method": "ngram", "num_speculative_tokens": 4}


def test_a_draft_model_becomes_the_draft_model_flag() -> None:
    speculative = {"method": "draft", "numTokens": 3, "draftModel": "file:///models/small.gguf"}
    dep = by_kind(
        resources.desired(spec_of(runtime={"speculative": speculative}), OWNER, "int8", 8).objects, "Deployment"
    )
    cmd = dep[0]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[cmd.index("--speculative-method") + 1] == "draft"
    assert cmd[cmd.index("--speculative-draft-model") + 1] == "/models/small.gguf"
    vllm = spec_of(runtime={"engine": "vllm", "speculative": speculative})
    cmd = by_kind(resources.desired(vllm, OWNER, "bf16", 8).objects, "Deployment")[0]["spec"]["template"]["spec"][
        "containers"
    ][0]["command"]
    config = json.loads(cmd[cmd.index("--speculative-config") + 1])
    assert config == {"method": "draft_model", "num_speculative_tokens": 3, "model": "/models/small.gguf"}


def test_a_remote_draft_model_is_fetched_after_the_model_into_the_same_cache() -> None:
    speculative = {"method": "draft", "draftModel": "hf://org/small"}
    remote = spec_of(model={"uri": "hf://org/big", "revision": "v2"}, runtime={"speculative": speculative})
    pod = by_kind(resources.desired(remote, OWNER, "int8", 8).objects, "Deployment")[0]["spec"]["template"]["spec"]
    (fetch,) = pod["initContainers"]
    # one fetch, model first (its revision), then the draft at its default revision: one ModelReady for both
    pull = ["infleet", "model", "pull", "hf://org/big", "hf://org/small", "--cache", "/model-cache", "--revision", "v2"]
    assert fetch["command"] == pull
    cmd = pod["containers"][0]["command"]
    assert (
        cmd[cmd.index("--speculative-draft-model") + 1] == f"/model-cache/{models.entry_name('hf://org/small', None)}"
    )
    # a local model with a remote draft: the cache volume is mounted for the draft alone
    local = spec_of(model={"uri": "file:///models/big.gguf"}, runtime={"speculative": speculative})
    pod = by_kind(resources.desired(local, OWNER, "int8", 8).objects, "Deployment")[0]["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["command"][:5] == ["infleet", "model", "pull", "hf://org/small", "--cache"]
    assert "--revision" not in pod["initContainers"][0]["command"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["model-cache"] == "/model-cache" and any(v["name"] == "model-cache" for v in pod["volumes"])
    assert pod["containers"][0]["command"][pod["containers"][0]["command"].index("--model") + 1] == "/models/big.gguf"


def test_vllm_engine_command() -> None:
    spec = spec_of(
        runtime={"engine": "vllm", "prefixCaching": False}, model={"uri": "hf://Qwen/Qwen2.5-7B", "revision": "v1"}
    )
    dep = by_kind(resources.desired(spec, OWNER, "fp8", 8).objects, "Deployment")[0]
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["image"].startswith("vllm/vllm-openai:")
    cmd = c["command"]
    assert cmd[:3] == ["vllm", "serve", f"/model-cache/{models.entry_name('hf://Qwen/Qwen2.5-7B', 'v1')}"]
    assert cmd[cmd.index("--served-model-name") + 1] == "llama"  # no servedName: the deployment's name
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "1"
    assert cmd[cmd.index("--max-num-batched-tokens") + 1] == "8192"
    assert cmd[cmd.index("--quantization") + 1] == "fp8"
    assert "--no-enable-prefix-caching" in cmd and "--revision" not in cmd  # the fetcher pinned it
    assert {"name": "HF_HOME", "value": "/model-cache/hf"} in c["env"]
    fetch = dep["spec"]["template"]["spec"]["initContainers"][0]
    assert fetch["image"] == f"infleet/runtime:{resources.infleet_version()}"  # infleet's fetcher, any engine
    assert fetch["command"][-2:] == ["--revision", "v1"]


def test_multi_node_groups_carry_rank_env() -> None:
    spec = spec_of(accelerator={"type": H100, "gpusPerNode": 8}, parallelism={"tensor": 8, "pipeline": 2}, replicas=3)
    want = resources.desired(spec, OWNER, "fp8", 8)
    assert want.layout == resources.Layout(gpus_per_replica=16, pods_per_replica=2, gpus_per_pod=8)
    groups = by_kind(want.objects, "StatefulSet")
    assert [g["metadata"]["name"] for g in groups] == [f"llama-{want.revision}-g{i}" for i in range(3)]
    assert not by_kind(want.objects, "Deployment")
    headless = [s for s in by_kind(want.objects, "Service") if s["spec"].get("clusterIP") == "None"]
    assert headless and headless[0]["metadata"]["name"] == "llama-group"
    for i, sts in enumerate(groups):
        assert sts["spec"]["replicas"] == 2 and sts["spec"]["podManagementPolicy"] == "Parallel"
        assert sts["spec"]["serviceName"] == "llama-group"
        tmpl = sts["spec"]["template"]
        assert tmpl["metadata"]["labels"]["infleet.dev/group"] == str(i)
        c = tmpl["spec"]["containers"][0]
        env = env_of(c)
        assert env["INFLEET_GROUP"] == str(i) and env["INFLEET_WORLD_SIZE"] == "2"
        assert env["INFLEET_RANK"] == {"fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}}
        assert env["INFLEET_LEADER_ADDR"] == f"llama-{want.revision}-g{i}-0.llama-group.serving.svc"
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
    endpoint = next(s for s in by_kind(want.objects, "Service") if s["metadata"]["name"] == "llama")
    assert endpoint["spec"]["selector"]["apps.kubernetes.io/pod-index"] == "0"  # leaders serve HTTP


def test_group_revision_follows_the_template() -> None:
    spec = spec_of(accelerator={"type": H100}, parallelism={"tensor": 16})
    a = resources.desired(spec, OWNER, "bf16", 8).revision
    assert resources.desired(spec, OWNER, "bf16", 8).revision == a  # stable
    assert resources.desired(spec, OWNER, "fp8", 8).revision != a  # tier change: new groups
    more = spec.model_copy(update={"replicas": 4})
    assert resources.desired(more, OWNER, "bf16", 8).revision == a  # scaling keeps the groups


def test_pvc_model_is_mounted() -> None:
    spec = spec_of(model={"uri": "pvc://weights/llama/8b"})
    dep = by_kind(resources.desired(spec, OWNER, "bf16", 1).objects, "Deployment")[0]
    pod = dep["spec"]["template"]["spec"]
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "weights", "readOnly": True}} in pod["volumes"]
    cmd = pod["containers"][0]["command"]
    assert cmd[cmd.index("--model") + 1] == "/models/weights/llama/8b"


@pytest.mark.parametrize(
    ("enabled", "replicas", "expected"), [(False, 7, 7), (True, 7, 4), (True, 0, 1), (False, 0, 0)]
)
def test_desired_replicas_respects_scaling_bounds(enabled: bool, replicas: int, expected: int) -> None:
    spec = spec_of(scaling={"enabled": enabled, "minReplicas": 1, "maxReplicas": 4}, replicas=replicas)
    assert resources.desired_replicas(spec) == expected


def test_tier_change_changes_the_pod_template() -> None:
    spec = spec_of()
    a = by_kind(resources.desired(spec, OWNER, "bf16", 1).objects, "Deployment")[0]
    b = by_kind(resources.desired(spec, OWNER, "int4", 1).objects, "Deployment")[0]
    assert a["spec"]["selector"] == b["spec"]["selector"]  # selectors are immutable: no tier in them
    assert a["spec"]["template"] != b["spec"]["template"]


def pod_spec(spec: api.InferenceDeploymentSpec) -> dict[str, Any]:
    dep = by_kind(resources.desired(spec, OWNER, "int8", 8).objects, "Deployment")[0]
    pod: dict[str, Any] = dep["spec"]["template"]["spec"]
    return pod


def test_a_remote_model_is_pulled_by_an_init_container_into_the_cache_the_engine_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.internal")
    uri = "s3://models/smollm2/"
    pod = pod_spec(spec_of(model={"uri": uri, "revision": "2024-11", "credentialsSecret": "s3-keys"}))
    (fetch,) = pod["initContainers"]
    assert fetch["name"] == "model-fetch" and fetch["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert fetch["command"] == ["infleet", "model", "pull", uri, "--cache", "/model-cache", "--revision", "2024-11"]
    assert fetch["envFrom"] == [{"secretRef": {"name": "s3-keys"}}]
    assert {"name": "HF_ENDPOINT", "value": "http://hub.internal"} in fetch["env"]  # the operator's store settings
    assert fetch["securityContext"] == resources.CONTAINER_SECURITY
    runtime = pod["containers"][0]
    assert {"name": "model-cache", "mountPath": "/model-cache"} in runtime["volumeMounts"]
    assert {"name": "model-cache", "mountPath": "/model-cache"} in fetch["volumeMounts"]
    model = runtime["command"][runtime["command"].index("--model") + 1]
    assert model == f"/model-cache/{models.entry_name(uri, '2024-11')}"
    assert {"name": "model-cache", "emptyDir": {}} in pod["volumes"]  # default: per pod


def test_the_model_cache_is_a_shared_claim_when_one_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(resources.DEFAULT_CACHE_CLAIM_ENV, "fleet-models")
    chart_default = pod_spec(spec_of(model={"uri": "hf://a/b"}))
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "fleet-models"}} in chart_default["volumes"]
    own = pod_spec(spec_of(model={"uri": "hf://a/b", "cache": {"claimName": "team-models"}}))
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "team-models"}} in own["volumes"]


def test_local_models_need_no_fetch() -> None:
    for uri in ("file:///models/x.gguf", "pvc://weights/llama"):
        pod = pod_spec(spec_of(model={"uri": uri}))
        assert "initContainers" not in pod and all(v["name"] != "model-cache" for v in pod["volumes"])


def test_the_operator_makes_the_shared_cache_claim_when_the_chart_sizes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from infleet.operator import checks

    assert resources.cache_claim("team-a") is None  # no size: nothing is created
    monkeypatch.setenv(resources.CACHE_SIZE_ENV, "500Gi")
    monkeypatch.setenv(resources.CACHE_STORAGE_CLASS_ENV, "fast")
    claim = resources.cache_claim("team-a")
    assert claim is not None and claim["metadata"]["name"] == "infleet-model-cache"
    assert claim["metadata"]["namespace"] == "team-a" and "ownerReferences" not in claim["metadata"]
    assert claim["spec"] == {
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": "500Gi"}},
        "storageClassName": "fast",
    }
    remote = spec_of(model={"uri": "hf://a/b"})
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "infleet-model-cache"}} in pod_spec(remote)[
        "volumes"
    ]
    assert checks.claims(remote) == [("the chart's models.cache.claimName", "infleet-model-cache")]
    assert checks.claims(spec_of(model={"uri": "file:///m.gguf"})) == []  # nothing fetched, no cache needed


ADAPTERS = [
    {"name": "sql", "uri": "hf://acme/sql-lora", "revision": "v2"},
    {"name": "poet", "uri": "file:///adapters/poet"},
]


def test_the_infleet_engine_starts_with_no_adapter_named_so_changing_them_restarts_nothing() -> None:
    """operator/adapters.py loads spec.adapters into running replicas: the pod template has the LoRA switches and the
    cache to fetch into, never an adapter's name, URI or fetch."""
    runtime = {"maxLoras": 2, "maxLoraRank": 32}
    spec = spec_of(adapters=ADAPTERS, runtime=runtime, model={**good_spec()["model"], "credentialsSecret": "hub"})
    pod = pod_spec(spec)
    assert [c["name"] for c in pod["initContainers"]] == ["model-fetch"]
    body = pod["containers"][0]
    cmd = body["command"]
    assert cmd[cmd.index("--enable-lora") :] == ["--enable-lora", "--max-loras", "2", "--max-lora-rank", "32",
                                                 "--model-cache", "/model-cache"]  # fmt: skip
    assert body["envFrom"] == [{"secretRef": {"name": "hub"}}]  # the runtime fetches the hf:// adapter itself
    other = spec_of(
        adapters=[{"name": "law", "uri": "s3://bucket/law"}],
        runtime=runtime,
        model=spec.model.model_dump(by_alias=True),
    )
    revision = resources.desired(spec, OWNER, "int8", 8).revision
    assert resources.desired(other, OWNER, "int8", 8).revision == revision  # other adapters: the same pods
    assert resources.desired(spec_of(), OWNER, "int8", 8).revision != revision  # none at all: no LoRA switches


def test_remote_adapters_of_a_local_model_get_a_cache_volume() -> None:
    pod = pod_spec(spec_of(model={"uri": "file:///models/x.gguf", "servedName": "x"}, adapters=ADAPTERS[:1]))
    assert "initContainers" not in pod
    assert {"name": "model-cache", "emptyDir": {}} in pod["volumes"]
    assert {"name": "model-cache", "mountPath": "/model-cache"} in pod["containers"][0]["volumeMounts"]


def test_vllm_starts_with_its_adapters_fetched_like_the_model() -> None:
    pod = pod_spec(spec_of(adapters=ADAPTERS, runtime={"engine": "vllm", "maxLoras": 2, "maxLoraRank": 32}))
    model_fetch, sql_fetch = pod["initContainers"]  # the file:/// adapter needs no fetch
    assert model_fetch["name"] == "model-fetch" and sql_fetch["name"] == "adapter-fetch-0"
    assert sql_fetch["command"] == ["infleet", "model", "pull", "hf://acme/sql-lora", "--cache", "/model-cache",
                                    "--revision", "v2"]  # fmt: skip
    cmd = pod["containers"][0]["command"]
    sql_entry = f"/model-cache/{models.entry_name('hf://acme/sql-lora', 'v2')}"
    assert cmd[cmd.index("--lora-modules") :][:3] == ["--lora-modules", f"sql={sql_entry}", "poet=/adapters/poet"]
    assert "envFrom" not in pod["containers"][0]


def test_vllm_gets_its_own_lora_flags_with_a_rank_it_accepts() -> None:
    spec = spec_of(adapters=ADAPTERS[1:], runtime={"engine": "vllm", "maxLoraRank": 12})
    cmd = pod_spec(spec)["containers"][0]["command"]
    assert cmd[0] == "vllm"
    assert cmd[cmd.index("--enable-lora") :] == ["--enable-lora", "--max-loras", "4", "--max-lora-rank", "16",
                                                 "--lora-modules", "poet=/adapters/poet"]  # fmt: skip


def test_no_adapters_no_lora_flags() -> None:
    assert "--enable-lora" not in pod_spec(spec_of())["containers"][0]["command"]
