"""Spec -> Kubernetes objects, as pure functions (no API calls), so every object the operator creates can be
read and tested here.

Layout. A replica needs `tensor x pipeline` GPUs. When that fits on one node, a replica is one pod and the
workload is a Deployment (rolling update: surge one, never below the ready count). When it does not, a replica is
a *group* of `gpus / gpus_per_node` pods, one per node, and each group is its own StatefulSet
`<name>-<revision>-g<i>` (Parallel pod management, so all ranks start together):

- a pod's rank is its StatefulSet ordinal, read through the downward API from the `apps.kubernetes.io/pod-index`
  label Kubernetes sets, and rank 0 is the leader, reachable at `<sts>-0.<name>-group.<ns>.svc` (headless Service);
- scaling adds or removes whole StatefulSets, so a group never runs short of ranks;
- the revision (a hash of the pod template) is part of the name: a spec change creates a new set of groups beside
  the old one, and the handler deletes the old set only when the new one is ready (surge for groups too).

When the cluster has the LeaderWorkerSet CRD (`leaderworkersets.leaderworkerset.x-k8s.io`), the groups are ONE
LeaderWorkerSet `<name>` instead: `replicas` = groups, `size` = pods per group, `RecreateGroupOnPodRestart` (one
failed rank restarts its whole group) and rolling updates a group at a time (one surge group, at most one down).
LWS sets each pod's `worker-index` (the rank; 0 is the leader) and `group-index` labels and `LWS_LEADER_ADDRESS`;
the StatefulSets above are the fallback when the CRD is absent (docs/multi-node.md).

Every object carries the labels of docs/architecture.md and an owner reference to the InferenceDeployment, so
deleting it garbage-collects everything.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from infleet.api import models
from infleet.operator.api import API_VERSION, KIND, InferenceDeploymentSpec

PORT = 8000
DIST_PORT = 29500  # the leader's rendezvous port for torch.distributed inside a group
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"
LWS_API_VERSION = "leaderworkerset.x-k8s.io/v1"
LWS_CRD = "leaderworkersets.leaderworkerset.x-k8s.io"
LWS_WORKER_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/worker-index"  # the rank within a group; 0 is the leader
LWS_GROUP_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/group-index"
VLLM_IMAGE = "vllm/vllm-openai:v0.11.0"
MODEL_MOUNT = "/models"
CACHE_MOUNT = "/model-cache"
CACHE_VOLUME = "model-cache"
CACHE_VOLUME_MOUNT = {"name": CACHE_VOLUME, "mountPath": CACHE_MOUNT}
FETCH_CONTAINER = "model-fetch"
ADAPTER_FETCH_CONTAINER = "adapter-fetch"  # -<index>: one per remote LoRA adapter
DEFAULT_CACHE_CLAIM_ENV = "INFLEET_MODEL_CACHE_CLAIM"
CACHE_SIZE_ENV = "INFLEET_MODEL_CACHE_SIZE"  # set: the operator creates the claim in each namespace that needs it
CACHE_STORAGE_CLASS_ENV = "INFLEET_MODEL_CACHE_STORAGE_CLASS"
CACHE_ACCESS_MODE_ENV = "INFLEET_MODEL_CACHE_ACCESS_MODE"
DEFAULT_CACHE_CLAIM = "infleet-model-cache"
FETCH_ENV_PASSED = ("HF_ENDPOINT", "AWS_ENDPOINT_URL", "AWS_REGION")
TEMPLATE_HASH_ANNOTATION = "infleet.dev/template-hash"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_DEPLOYMENT = "infleet.dev/deployment"
LABEL_TIER = "infleet.dev/tier"
LABEL_GROUP = "infleet.dev/group"
LABEL_RANK = "infleet.dev/rank"
LABEL_REVISION = "infleet.dev/revision"
LABEL_ROLE = "infleet.dev/role"  # leader or worker, in a LeaderWorkerSet's templates
MANAGED_BY = "infleet"
MANAGED_LABELS = {LABEL_MANAGED_BY: MANAGED_BY}  # what the operator watches among pods and workloads
APP_NAME = "infleet-runtime"


@functools.cache  # a metadata lookup reads the installed files: it was a twentieth of the operator's CPU at scale
def infleet_version() -> str:
    try:
        return metadata.version("infleet")
    except metadata.PackageNotFoundError:
        return "0.0.0"


@dataclass(frozen=True)
class Owner:
    """The InferenceDeployment the objects belong to."""

    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


@dataclass(frozen=True)
class Layout:
    """How one replica maps onto pods and GPUs."""

    gpus_per_replica: int
    pods_per_replica: int
    gpus_per_pod: int

    @property
    def grouped(self) -> bool:
        return self.pods_per_replica > 1


def layout(spec: InferenceDeploymentSpec, gpus_per_node: int) -> Layout:
    gpus = spec.gpus_per_replica
    if gpus <= gpus_per_node:
        return Layout(gpus, 1, gpus)
    return Layout(gpus, math.ceil(gpus / gpus_per_node), gpus_per_node)


def desired_replicas(spec: InferenceDeploymentSpec) -> int:
    """spec.replicas, kept within the scaling bounds when the autoscaler owns it (not in advisory mode: there it
    only watches)."""
    if spec.scaling.enabled and spec.scaling.mode == "apply":
        return max(spec.scaling.min_replicas, min(spec.scaling.max_replicas, spec.replicas))
    return spec.replicas


def served_name(spec: InferenceDeploymentSpec, name: str) -> str:
    return spec.model.served_name or name


def labels(owner: Owner, tier: str) -> dict[str, str]:
    return {
        LABEL_NAME: APP_NAME,
        LABEL_INSTANCE: owner.name,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_DEPLOYMENT: owner.name,
        LABEL_TIER: tier,
    }


def selector_labels(owner: Owner) -> dict[str, str]:
    """The stable subset used in selectors (selectors are immutable, so no tier in them)."""
    return {LABEL_NAME: APP_NAME, LABEL_DEPLOYMENT: owner.name}


def selector_string(owner: Owner) -> str:
    return ",".join(f"{k}={v}" for k, v in selector_labels(owner).items())


def group_service_name(owner: Owner) -> str:
    return f"{owner.name}-group"


def endpoint(owner: Owner) -> str:
    return f"http://{owner.name}.{owner.namespace}.svc:{PORT}"


def _meta(owner: Owner, name: str, tier: str, extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": {**labels(owner, tier), **(extra_labels or {})},
        "ownerReferences": [owner.reference()],
    }


# ---- the container ----------------------------------------------------------------------------------------------


def model_location(spec: InferenceDeploymentSpec) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """The model argument the engine gets, plus the volumes and mounts it needs.

    pvc://claim/path mounts the claim read-only under /models/claim; file:///path is a path in the image or on the
    node; hf://, s3://, gs:// and https:// are fetched by the `model-fetch` init container into the model cache,
    and the engine loads the cache entry (a local directory).
    """
    model = spec.model
    uri = model.uri
    if uri.startswith("pvc://"):
        claim, _, path = uri.removeprefix("pvc://").partition("/")
        volume = {"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        mount = {"name": "model", "mountPath": f"{MODEL_MOUNT}/{claim}", "readOnly": True}
        return f"{MODEL_MOUNT}/{claim}/{path}".rstrip("/"), [volume], [mount]
    if uri.startswith("file://"):
        return uri.removeprefix("file://"), [], []
    return cache_path(uri, model.revision), [cache_volume(spec)], [CACHE_VOLUME_MOUNT]


def draft_model(spec: InferenceDeploymentSpec) -> str | None:
    return spec.runtime.speculative.draft_model if spec.runtime.speculative else None


def draft_location(spec: InferenceDeploymentSpec) -> str | None:
    """The speculative draft model's path in the container: a file:/// path as is, a remote URI the cache entry the
    fetch init container pulls it into (after the model, with the model's credentials and cache)."""
    uri = draft_model(spec)
    if uri is None or not models.is_remote(uri):
        return uri.removeprefix("file://") if uri else None
    return cache_path(uri, None)


def fetched(spec: InferenceDeploymentSpec) -> list[str]:
    """The remote URIs the model-fetch init container pulls before the engine starts: the model's, then the draft's."""
    return [u for u in (spec.model.uri, draft_model(spec)) if u and models.is_remote(u)]


def uses_cache(spec: InferenceDeploymentSpec) -> bool:
    """Whether the pod pulls anything into the model cache: the model, the draft model or a LoRA adapter."""
    return bool(fetched(spec)) or any(models.is_remote(a.uri) for a in spec.adapters)


def default_cache_claim() -> str | None:
    """The operator-wide cache claim (chart values models.cache): named, or made by the operator when it has a size."""
    claim = os.environ.get(DEFAULT_CACHE_CLAIM_ENV)
    return claim or (DEFAULT_CACHE_CLAIM if os.environ.get(CACHE_SIZE_ENV) else None)


def cache_claim_name(spec: InferenceDeploymentSpec) -> str | None:
    if not uses_cache(spec):
        return None
    return spec.model.cache.claim_name if spec.model.cache else default_cache_claim()


def cache_volume(spec: InferenceDeploymentSpec) -> dict[str, Any]:
    """The model cache: the deployment's claim, else the operator's default claim (the chart's models.cache), else
    an emptyDir that lives as long as the pod."""
    claim = cache_claim_name(spec)
    if claim:
        return {"name": CACHE_VOLUME, "persistentVolumeClaim": {"claimName": claim}}
    return {"name": CACHE_VOLUME, "emptyDir": {}}


def cache_claim(namespace: str) -> dict[str, Any] | None:
    """The shared cache claim the operator creates in a namespace when the chart gives models.cache a size. It has
    no owner: it outlives every deployment (that is the point), and deleting it is the user's choice."""
    size = os.environ.get(CACHE_SIZE_ENV)
    if not size:
        return None
    spec: dict[str, Any] = {
        "accessModes": [os.environ.get(CACHE_ACCESS_MODE_ENV) or "ReadWriteMany"],
        "resources": {"requests": {"storage": size}},
    }
    if os.environ.get(CACHE_STORAGE_CLASS_ENV):
        spec["storageClassName"] = os.environ[CACHE_STORAGE_CLASS_ENV]
    meta = {"name": default_cache_claim(), "namespace": namespace, "labels": {LABEL_MANAGED_BY: MANAGED_BY}}
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": spec}


def fetch_container(spec: InferenceDeploymentSpec) -> dict[str, Any] | None:
    """The init container that pulls a remote model into the cache (KServe's storage-initializer pattern). Its
    last line on failure is `REASON: message`, which Kubernetes keeps as the termination message and the
    operator turns into the ModelReady condition."""
    model, uris = spec.model, fetched(spec)
    if not uris:
        return None
    revision = model.revision if models.is_remote(model.uri) else None  # the model's; a draft is at its default
    return pull_container(spec, FETCH_CONTAINER, uris, revision)


def live_adapters(spec: InferenceDeploymentSpec) -> bool:
    """Whether the operator loads `spec.adapters` into running replicas (operator/adapters.py) instead of the pod
    template naming them: the infleet engine fetches an adapter itself on load, so the template names none and
    adding or removing one restarts nothing. vLLM starts with its adapters' files in the pod."""
    return spec.runtime.engine == "infleet"


def adapter_fetch_containers(spec: InferenceDeploymentSpec) -> list[dict[str, Any]]:
    """For vLLM: one init container per remote LoRA adapter, pulling it into the same cache with the same fetcher
    (and the model's credentials), after the model's."""
    if live_adapters(spec):
        return []
    return [
        pull_container(spec, f"{ADAPTER_FETCH_CONTAINER}-{i}", [a.uri], a.revision)
        for i, a in enumerate(spec.adapters)
        if models.is_remote(a.uri)
    ]


def adapter_modules(spec: InferenceDeploymentSpec) -> list[str]:
    """`--lora-modules` values, NAME=PATH: a fetched adapter's cache entry, or a file:/// adapter's path."""
    return [
        f"{a.name}={a.uri.removeprefix('file://') if a.uri.startswith('file://') else cache_path(a.uri, a.revision)}"
        for a in spec.adapters
    ]


def cache_path(uri: str, revision: str | None) -> str:
    return f"{CACHE_MOUNT}/{models.entry_name(uri, revision)}"


def pull_container(spec: InferenceDeploymentSpec, name: str, uris: list[str], revision: str | None) -> dict[str, Any]:
    """`infleet model pull URI... --cache /model-cache` in the runtime image, with the store settings and secret; the
    revision is the first URI's."""
    command = ["infleet", "model", "pull", *uris, "--cache", CACHE_MOUNT]
    if revision:
        command += ["--revision", revision]
    body: dict[str, Any] = {
        "name": name,
        "image": f"infleet/runtime:{infleet_version()}",  # the fetcher is infleet's, whichever engine serves
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "env": [{"name": "HOME", "value": "/tmp"}, {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"}]
        + [{"name": k, "value": v} for k, v in sorted(fetch_env().items())],
        "volumeMounts": [{"name": CACHE_VOLUME, "mountPath": CACHE_MOUNT}, {"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": CONTAINER_SECURITY,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.model.credentials_secret:
        body["envFrom"] = [{"secretRef": {"name": spec.model.credentials_secret}}]
    return body


def fetch_env() -> dict[str, str]:
    """Store endpoints the operator was installed with (chart values `modelStores`), passed to every fetch: a
    private hub mirror (HF_ENDPOINT) or an in-cluster S3 store (AWS_ENDPOINT_URL). A Secret's keys override them."""
    return {k: os.environ[k] for k in FETCH_ENV_PASSED if os.environ.get(k)}


# vLLM has no in-flight int8 weight quantization; int4 in flight is bitsandbytes.
VLLM_TIER_FLAGS: dict[str, list[str]] = {
    "bf16": ["--dtype", "bfloat16"],
    "fp8": ["--quantization", "fp8"],
    "int4": ["--quantization", "bitsandbytes"],
}


# vLLM's SpeculativeConfig method names for ours
VLLM_SPECULATIVE_METHODS = {"ngram": "ngram", "draft": "draft_model"}


def engine_command(spec: InferenceDeploymentSpec, name: str, tier: str, model_arg: str) -> list[str]:
    rt, par = spec.runtime, spec.parallelism
    if rt.engine == "vllm":
        cmd = ["vllm", "serve", model_arg, "--served-model-name", served_name(spec, name), "--host", "0.0.0.0"]
        cmd += ["--port", str(PORT), "--tensor-parallel-size", str(par.tensor)]
        cmd += ["--pipeline-parallel-size", str(par.pipeline), "--max-num-batched-tokens", str(rt.max_batch_tokens)]
        cmd += ["--max-model-len", str(rt.max_model_len)]
        cmd += ["--enable-prefix-caching" if rt.prefix_caching else "--no-enable-prefix-caching"]
        cmd += VLLM_TIER_FLAGS.get(tier, [])
        if rt.speculative is not None:
            method = VLLM_SPECULATIVE_METHODS[rt.speculative.method]
            config: dict[str, Any] = {"method": method, "num_speculative_tokens": rt.speculative.num_tokens}
            if draft := draft_location(spec):
                config["model"] = draft
            cmd += ["--speculative-config", json.dumps(config, separators=(",", ":"))]
        return cmd + lora_flags(spec) + list(rt.extra_args)
    cmd = ["python", "-m", "infleet.runtime", "serve", "--model", model_arg, "--served-name", served_name(spec, name)]
    cmd += ["--host", "0.0.0.0", "--port", str(PORT), "--tier", tier, "--tensor-parallel", str(par.tensor)]
    cmd += ["--pipeline-parallel", str(par.pipeline), "--max-batch-tokens", str(rt.max_batch_tokens)]
    cmd += ["--max-model-len", str(rt.max_model_len)]
    if not rt.prefix_caching:
        cmd += ["--no-prefix-caching"]
    if rt.speculative is not None:
        cmd += [
            "--speculative-method",
            rt.speculative.method,
            "--speculative-num-tokens",
            str(rt.speculative.num_tokens),
        ]
        if draft := draft_location(spec):
            cmd += ["--speculative-draft-model", draft]
        if rt.speculative.max_batch_size is not None:
            cmd += ["--speculative-max-batch-size", str(rt.speculative.max_batch_size)]
    return cmd + lora_flags(spec) + list(rt.extra_args)


# vLLM accepts only these --max-lora-rank values; the spec's rank is rounded up to one
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def lora_flags(spec: InferenceDeploymentSpec) -> list[str]:
    """The adapters' flags; vLLM and the infleet runtime spell them alike. vLLM starts with its adapters
    (`--lora-modules`); the infleet runtime starts with none and gets the cache directory (when the pod mounts one),
    so that the adapters the operator loads by URI go through the same fetcher and cache."""
    if not spec.adapters:
        return []
    rt = spec.runtime
    rank = rt.max_lora_rank
    if rt.engine == "vllm":
        rank = next(r for r in VLLM_LORA_RANKS if r >= rank)
    cmd = ["--enable-lora", "--max-loras", str(rt.max_loras), "--max-lora-rank", str(rank)]
    if not live_adapters(spec):
        cmd += ["--lora-modules", *adapter_modules(spec)]
    elif uses_cache(spec):
        cmd += ["--model-cache", CACHE_MOUNT]
    return cmd


def image(spec: InferenceDeploymentSpec) -> str:
    if spec.runtime.image:
        return spec.runtime.image
    return VLLM_IMAGE if spec.runtime.engine == "vllm" else f"infleet/runtime:{infleet_version()}"


# Pod Security Standard "restricted": non-root (the images' numeric user), no privilege escalation, no capabilities,
# the runtime's default seccomp profile, a read-only root filesystem (writable emptyDirs are mounted where needed).
RUNTIME_UID = 10001
POD_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": RUNTIME_UID,
    "runAsGroup": RUNTIME_UID,
    "fsGroup": RUNTIME_UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _probe(path: str, period: int, failures: int, initial: int = 0) -> dict[str, Any]:
    probe: dict[str, Any] = {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period}
    probe |= {"failureThreshold": failures, "timeoutSeconds": 5}
    if initial:
        probe["initialDelaySeconds"] = initial
    return probe


def container(
    spec: InferenceDeploymentSpec, owner: Owner, tier: str, lay: Layout, group_env: list[dict[str, Any]]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The runtime container and the pod volumes it needs."""
    model_arg, volumes, mounts = model_location(spec)
    if uses_cache(spec) and CACHE_VOLUME_MOUNT not in mounts:  # a local model with a remote draft or adapter
        volumes, mounts = [*volumes, cache_volume(spec)], [*mounts, CACHE_VOLUME_MOUNT]
    env: list[dict[str, Any]] = [
        {"name": "INFLEET_DEPLOYMENT", "value": owner.name},
        {"name": "INFLEET_TIER", "value": tier},
        {"name": "INFLEET_GPUS_PER_POD", "value": str(lay.gpus_per_pod)},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    if spec.model.revision:
        env.append({"name": "INFLEET_MODEL_REVISION", "value": spec.model.revision})
    if spec.runtime.engine == "vllm":
        env.append({"name": "HOME", "value": "/tmp"})  # its image's HOME is /root, unwritable as the non-root user
        if uses_cache(spec):  # what vLLM downloads itself (tokenizer extras) lands in the cache too
            env.append({"name": "HF_HOME", "value": f"{CACHE_MOUNT}/hf"})
    if fetches_adapters(spec):  # the store endpoints its own adapter fetches need, as the fetch containers get them
        env += [{"name": k, "value": v} for k, v in sorted(fetch_env().items())]
    env += group_env + [{"name": e.name, "value": e.value} for e in spec.runtime.env]

    gpus = str(lay.gpus_per_pod)
    requests: dict[str, str] = {GPU_RESOURCE: gpus}
    limits: dict[str, str] = {GPU_RESOURCE: gpus}
    res = spec.runtime.resources
    if res and res.cpu:
        requests["cpu"] = res.cpu
    if res and res.memory:
        requests["memory"] = limits["memory"] = res.memory

    ports = [{"name": "http", "containerPort": PORT, "protocol": "TCP"}]
    if lay.grouped:
        ports.append({"name": "dist", "containerPort": DIST_PORT, "protocol": "TCP"})
    # the root filesystem is read-only: shared memory for NCCL/gloo, and /tmp for the caches the images point at
    # (TRITON_CACHE_DIR, HF_HOME, INFLEET_CACHE live under /tmp in the runtime image)
    volumes = [*volumes, {"name": "dshm", "emptyDir": {"medium": "Memory"}}, {"name": "tmp", "emptyDir": {}}]
    mounts = [*mounts, {"name": "dshm", "mountPath": "/dev/shm"}, {"name": "tmp", "mountPath": "/tmp"}]
    body = {
        "name": "runtime",
        "image": image(spec),
        "imagePullPolicy": "IfNotPresent",
        "command": engine_command(spec, owner.name, tier, model_arg),
        "ports": ports,
        "env": env,
        "resources": {"requests": requests, "limits": limits},
        "volumeMounts": mounts,
        "securityContext": CONTAINER_SECURITY,
        **({"envFrom": [{"secretRef": {"name": secret}}]} if (secret := runtime_credentials(spec)) else {}),
        # loading weights may take minutes: the startup probe holds liveness off until the first healthy answer
        "startupProbe": _probe("/health", period=5, failures=360),
        "readinessProbe": _probe("/health", period=5, failures=3),
        "livenessProbe": _probe("/health", period=10, failures=6),
    }
    return body, volumes


def fetches_adapters(spec: InferenceDeploymentSpec) -> bool:
    """The runtime itself pulls remote adapters from their stores (live_adapters)."""
    return live_adapters(spec) and any(models.is_remote(a.uri) for a in spec.adapters)


def runtime_credentials(spec: InferenceDeploymentSpec) -> str | None:
    """The model's credentialsSecret, for a runtime that fetches remote adapters itself."""
    return spec.model.credentials_secret if fetches_adapters(spec) else None


def pod_template(
    spec: InferenceDeploymentSpec,
    owner: Owner,
    tier: str,
    lay: Layout,
    extra_labels: dict[str, str] | None = None,
    group_env: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    body, volumes = container(spec, owner, tier, lay, group_env or [])
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": GPU_PRODUCT_LABEL, "operator": "In", "values": [spec.accelerator.type]}
                        ]
                    }
                ]
            }
        }
    }
    return {
        "metadata": {
            "labels": {**labels(owner, tier), **(extra_labels or {})},
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(PORT),
                "prometheus.io/path": "/metrics",
            },
        },
        "spec": {
            "affinity": affinity,
            "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
            **({"initContainers": init} if (init := init_containers(spec)) else {}),
            "containers": [body],
            "volumes": volumes,
            "securityContext": POD_SECURITY,
            "terminationGracePeriodSeconds": 60,  # let in-flight requests finish
            "enableServiceLinks": False,
        },
    }


def init_containers(spec: InferenceDeploymentSpec) -> list[dict[str, Any]]:
    fetch = fetch_container(spec)
    return ([fetch] if fetch else []) + adapter_fetch_containers(spec)


def template_hash(template: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:8]


# ---- workloads --------------------------------------------------------------------------------------------------


def deployment(spec: InferenceDeploymentSpec, owner: Owner, tier: str, lay: Layout) -> dict[str, Any]:
    template = pod_template(spec, owner, tier, lay)
    meta = _meta(owner, owner.name, tier)
    meta["annotations"] = {TEMPLATE_HASH_ANNOTATION: template_hash(template)}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": desired_replicas(spec),
            "selector": {"matchLabels": selector_labels(owner)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "revisionHistoryLimit": 5,
            "progressDeadlineSeconds": 1800,
            "template": template,
        },
    }


def group_revision(spec: InferenceDeploymentSpec, owner: Owner, tier: str, lay: Layout) -> str:
    """The hash of what a group runs (the group-independent part of its pod template)."""
    return template_hash(pod_template(spec, owner, tier, lay, group_env=_group_env(owner, "g", lay)))


def group_name(owner: Owner, revision: str, group: int) -> str:
    return f"{owner.name}-{revision}-g{group}"


def _group_env(owner: Owner, sts: str, lay: Layout) -> list[dict[str, Any]]:
    leader = f"{sts}-0.{group_service_name(owner)}.{owner.namespace}.svc"
    rank = {"fieldRef": {"fieldPath": f"metadata.labels['{POD_INDEX_LABEL}']"}}
    return [
        {"name": "INFLEET_GROUP_NAME", "value": sts},
        {"name": "INFLEET_RANK", "valueFrom": rank},
        {"name": "INFLEET_WORLD_SIZE", "value": str(lay.pods_per_replica)},
        {"name": "INFLEET_LEADER_ADDR", "value": leader},
        {"name": "INFLEET_LEADER_PORT", "value": str(DIST_PORT)},
    ]


def group_statefulset(
    spec: InferenceDeploymentSpec, owner: Owner, tier: str, lay: Layout, revision: str, group: int
) -> dict[str, Any]:
    name = group_name(owner, revision, group)
    group_labels = {LABEL_GROUP: str(group), LABEL_REVISION: revision}
    env = [{"name": "INFLEET_GROUP", "value": str(group)}, *_group_env(owner, name, lay)]
    template = pod_template(spec, owner, tier, lay, extra_labels=group_labels, group_env=env)
    meta = _meta(owner, name, tier, group_labels)
    meta["annotations"] = {TEMPLATE_HASH_ANNOTATION: template_hash(template)}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta,
        "spec": {
            "replicas": lay.pods_per_replica,
            "serviceName": group_service_name(owner),
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {**selector_labels(owner), **group_labels}},
            "updateStrategy": {"type": "RollingUpdate"},
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Delete"},
            "template": template,
        },
    }


def _lws_group_env(lay: Layout) -> list[dict[str, Any]]:
    """What a rank learns from the labels and variables LeaderWorkerSet gives each pod. `$(LWS_LEADER_ADDRESS)` is
    expanded by the kubelet: LWS puts that variable ahead of the container's own."""

    def label(key: str) -> dict[str, Any]:
        return {"fieldRef": {"fieldPath": f"metadata.labels['{key}']"}}

    return [
        {"name": "INFLEET_GROUP", "valueFrom": label(LWS_GROUP_INDEX_LABEL)},
        {"name": "INFLEET_RANK", "valueFrom": label(LWS_WORKER_INDEX_LABEL)},
        {"name": "INFLEET_WORLD_SIZE", "value": str(lay.pods_per_replica)},
        {"name": "INFLEET_LEADER_ADDR", "value": "$(LWS_LEADER_ADDRESS)"},
        {"name": "INFLEET_LEADER_PORT", "value": str(DIST_PORT)},
    ]


def group_leaderworkerset(spec: InferenceDeploymentSpec, owner: Owner, tier: str, lay: Layout) -> dict[str, Any]:
    """All groups as one LeaderWorkerSet: LWS rolls a spec change out group by group (one surge group, at most one
    group down) and recreates a whole group when any of its pods restarts."""
    env = _lws_group_env(lay)
    leader = pod_template(spec, owner, tier, lay, extra_labels={LABEL_ROLE: "leader"}, group_env=env)
    worker = pod_template(spec, owner, tier, lay, extra_labels={LABEL_ROLE: "worker"}, group_env=env)
    meta = _meta(owner, owner.name, tier)
    meta["annotations"] = {TEMPLATE_HASH_ANNOTATION: template_hash(worker)}
    return {
        "apiVersion": LWS_API_VERSION,
        "kind": "LeaderWorkerSet",
        "metadata": meta,
        "spec": {
            "replicas": desired_replicas(spec),
            "startupPolicy": "LeaderCreated",
            "leaderWorkerTemplate": {
                "size": lay.pods_per_replica,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": leader,
                "workerTemplate": worker,
            },
            # LWS hands maxUnavailable to its leader StatefulSet, where 0 is invalid: one group may be down while
            # the surge group starts
            "rolloutStrategy": {
                "type": "RollingUpdate",
                "rollingUpdateConfiguration": {"maxUnavailable": 1, "maxSurge": 1},
            },
        },
    }


# ---- services and disruption budget -----------------------------------------------------------------------------


def service(owner: Owner, tier: str, lay: Layout, lws: bool = False) -> dict[str, Any]:
    """The endpoint: every single-pod replica, or every group's leader (rank 0 serves HTTP for its group)."""
    selector = selector_labels(owner)
    if lay.grouped:
        selector = {**selector, (LWS_WORKER_INDEX_LABEL if lws else POD_INDEX_LABEL): "0"}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(owner, owner.name, tier),
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def headless_service(owner: Owner, tier: str) -> dict[str, Any]:
    """Stable DNS for group members (`<sts>-<rank>.<name>-group`), published before pods are ready so that ranks
    can find their leader while they load."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(owner, group_service_name(owner), tier),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector_labels(owner),
            "ports": [
                {"name": "http", "port": PORT, "targetPort": PORT, "protocol": "TCP"},
                {"name": "dist", "port": DIST_PORT, "targetPort": DIST_PORT, "protocol": "TCP"},
            ],
        },
    }


def disruption_budget(owner: Owner, tier: str) -> dict[str, Any]:
    """Voluntary evictions (node drains) take one pod at a time (rendered only for more than one pod, see
    `wants_disruption_budget`)."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(owner, owner.name, tier),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(owner)}},
    }


@dataclass(frozen=True)
class Desired:
    """Everything the operator wants to exist for one InferenceDeployment."""

    layout: Layout
    tier: str
    revision: str  # template hash of the workload (Deployment) or of each group
    objects: list[dict[str, Any]]

    @property
    def workloads(self) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] in WORKLOAD_KINDS]

    @property
    def leaderworkerset(self) -> bool:
        return any(o["kind"] == "LeaderWorkerSet" for o in self.objects)


WORKLOAD_KINDS = ("Deployment", "StatefulSet", "LeaderWorkerSet")


def wants_disruption_budget(spec: InferenceDeploymentSpec, lay: Layout) -> bool:
    """A budget of one unavailable pod constrains nothing over a single pod, and each budget costs the API server an
    object and the disruption controller a watch on every pod of the namespace: only more than one pod gets one."""
    return desired_replicas(spec) * lay.pods_per_replica > 1


def desired(spec: InferenceDeploymentSpec, owner: Owner, tier: str, gpus_per_node: int, lws: bool = False) -> Desired:
    """`lws`: the cluster has the LeaderWorkerSet CRD, so groups are one LeaderWorkerSet rather than StatefulSets."""
    lay = layout(spec, gpus_per_node)
    objects = [service(owner, tier, lay, lws)]
    if wants_disruption_budget(spec, lay):
        objects.append(disruption_budget(owner, tier))
    if not lay.grouped:
        dep = deployment(spec, owner, tier, lay)
        return Desired(lay, tier, dep["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION], [dep, *objects])
    if lws:
        sets = group_leaderworkerset(spec, owner, tier, lay)
        return Desired(lay, tier, sets["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION], [sets, *objects])
    revision = group_revision(spec, owner, tier, lay)
    groups = [group_statefulset(spec, owner, tier, lay, revision, g) for g in range(desired_replicas(spec))]
    return Desired(lay, tier, revision, [*groups, headless_service(owner, tier), *objects])
