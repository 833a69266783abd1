"""The InferenceDeployment API: pydantic models that are the CRD's single source of truth.

`crd.py` turns these models into the OpenAPI schema the API server enforces, so every bound, enum and
pattern here is checked by Kubernetes before the operator ever sees an object. Cross-field rules are CEL
expressions (`x-kubernetes-validations`) attached with `cel(...)`; what only the operator can judge (is there
a node with this GPU? does the model volume exist?) becomes a `Degraded` condition instead (see `checks.py`).

JSON field names are camelCase (aliases); Python attributes are snake_case.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from infleet.api import speculative as spec
from infleet.api.conditions import Condition
from infleet.api.durations import DURATION_PATTERN

GROUP = "infleet.dev"
VERSION = "v1alpha1"
KIND = "InferenceDeployment"
PLURAL = "inferencedeployments"
SINGULAR = "inferencedeployment"
SHORT_NAMES = ["idep"]
API_VERSION = f"{GROUP}/{VERSION}"

Tier = Literal["bf16", "fp8", "int8", "int4"]  # the CRD's enum; pydantic needs a Literal (equal to api.tiers.TIERS)
TIERS: tuple[Tier, ...] = get_args(Tier)
Engine = Literal["infleet", "vllm"]
BudgetPeriod = Literal["1d", "7d", "14d", "28d", "30d"]
BUDGET_PERIODS: tuple[BudgetPeriod, ...] = get_args(BudgetPeriod)

# "500ms", "2s", "1m30s": the subset of Go/CEL durations that people write in SLOs and windows.
Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=32, examples=["500ms", "2s"])]

# hf://org/name, s3://bucket/key, gs://bucket/key, pvc://claim/path, file:///abs/path, https://host/x.gguf
MODEL_URI_PATTERN = (
    r"^(hf://[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._/-]*"
    r"|s3://[a-z0-9][a-z0-9.-]{1,62}/.+"
    r"|gs://[a-z0-9][a-z0-9._-]{1,62}/.+"
    r"|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?"
    r"|file:///.+"
    r"|https?://.+\.gguf)$"
)
# LoRA adapters are directories (adapter_config.json + adapter_model.safetensors): fetched from hf://, s3://, gs://, or
# a file:/// path in the image or on the node
ADAPTER_URI_PATTERN = (
    r"^(hf://[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._/-]*"
    r"|s3://[a-z0-9][a-z0-9.-]{1,62}/.+"
    r"|gs://[a-z0-9][a-z0-9._-]{1,62}/.+"
    r"|file:///.+)$"
)
# an adapter's served name: DNS-label-like, so it reads the same in URLs, metric labels and flags
ADAPTER_NAME_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9._]{0,61}[A-Za-z0-9])?$"
MAX_ADAPTERS = 64
# a DNS-1123 subdomain: the names of Secrets and PersistentVolumeClaims
DNS_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Kubernetes quantities ("500m", "2", "8Gi"); resource values are strings so that "8Gi" reads as written.
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
# what NVIDIA GPU feature discovery writes into nvidia.com/gpu.product (a label value)
GPU_PRODUCT_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"

MAX_REPLICAS = 1000
# A multi-node replica is a StatefulSet named `<name>-<8-hex revision>-g<group>` (group < MAX_REPLICAS: 14 characters
# added), and a StatefulSet name must leave room for its pods' `controller-revision-hash` label, `<sts>-<10 chars>`
# within 63: 52 - 14 = 38. One bound for every deployment, so that changing parallelism never breaks a name.
MAX_NAME_LENGTH = 52 - len(f"-{'0' * 8}-g{MAX_REPLICAS - 1}")
MAX_GPUS_PER_REPLICA = 128


def cel(rule: str, message: str, field_path: str | None = None, reason: str | None = None) -> dict[str, Any]:
    """One CEL validation rule for `x-kubernetes-validations`."""
    out: dict[str, Any] = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    if reason:
        out["reason"] = reason
    return out


def validations(*rules: dict[str, Any]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


def camel(name: str) -> str:
    """snake_case -> camelCase word by word: `e2e_p99` is `e2eP99` (pydantic's to_camel would say `e2EP99`)."""
    first, *rest = name.split("_")
    return first + "".join(word[:1].upper() + word[1:] for word in rest)


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are an error (as the API server's strict mode)."""

    model_config = ConfigDict(alias_generator=camel, populate_by_name=True, extra="forbid")


class ModelCache(ApiModel):
    """A PersistentVolumeClaim shared by the replicas, so restarts, new replicas and scale-from-zero reuse a model
    downloaded once (ReadWriteMany for replicas on several nodes)."""

    claim_name: str = Field(pattern=DNS_NAME_PATTERN, max_length=253, description="The claim, in this namespace.")


class ModelSource(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(oldSelf.servedName) || (has(self.servedName) && self.servedName == oldSelf.servedName)",
                "model.servedName is immutable: clients and the gateway route by it; create a new deployment",
                field_path=".servedName",
            )
        )
    )

    uri: str = Field(
        pattern=MODEL_URI_PATTERN,
        max_length=1024,
        description="Where the weights are: hf://org/name, s3://, gs://, pvc://claim/path, file:///path (a .gguf file "
        "or a directory), https://.../x.gguf. May change: a new URI rolls out like any other spec change.",
    )
    revision: str | None = Field(
        default=None,
        max_length=128,
        description="Branch, tag or commit (hf://); for other stores, part of the cache key.",
    )
    served_name: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:-]{0,127}$",
        max_length=128,
        description="The model name clients send; defaults to the deployment's name. Immutable.",
    )
    credentials_secret: str | None = Field(
        default=None,
        pattern=DNS_NAME_PATTERN,
        max_length=253,
        description="A Secret in this namespace whose keys become the model fetcher's environment: HF_TOKEN for "
        "hf://; AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and AWS_ENDPOINT_URL (any S3-compatible store) "
        "for s3://; GOOGLE_APPLICATION_CREDENTIALS' JSON as GOOGLE_SERVICE_ACCOUNT_JSON for gs://.",
    )
    cache: ModelCache | None = Field(
        default=None,
        description="Where fetched models are kept. Default: the chart's modelCache claim if it names one, else a "
        "per-pod emptyDir (each new pod downloads again).",
    )


class Adapter(ApiModel):
    """A LoRA adapter (PEFT format) of the model, served by every replica as a model name of its own."""

    name: str = Field(
        pattern=ADAPTER_NAME_PATTERN,
        max_length=63,
        description="The model name clients send to use the adapter; unique, and not the base model's servedName.",
    )
    uri: str = Field(
        pattern=ADAPTER_URI_PATTERN,
        max_length=1024,
        description="The adapter directory: hf://org/name, s3://bucket/prefix, gs://bucket/prefix (fetched like the "
        "model, with its credentialsSecret), or file:///path in the image or on the node.",
    )
    revision: str | None = Field(
        default=None, max_length=128, description="Branch, tag or commit (hf://); for other stores, the cache key."
    )


class Resources(ApiModel):
    """CPU and memory per pod (GPUs come from parallelism and accelerator)."""

    cpu: str | None = Field(default=None, pattern=QUANTITY_PATTERN, max_length=32, description="e.g. 4 or 500m")
    memory: str | None = Field(default=None, pattern=QUANTITY_PATTERN, max_length=32, description="e.g. 32Gi")


class EnvVar(ApiModel):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=128)
    value: str = Field(default="", max_length=4096)


class Speculative(ApiModel):
    """Speculative decoding: draft a few tokens cheaply and verify them in one forward pass (same outputs)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.draftModel) == (self.method == 'draft')",
                "speculative.draftModel is required when speculative.method is draft, and only then",
                field_path=".draftModel",
            ),
            cel(
                "!has(self.draftModel) || !self.draftModel.startsWith('pvc://')",
                "speculative.draftModel cannot be a pvc:// URI (no claim is mounted for it): use a store URI (hf://, "
                "s3://, gs://, https://), fetched into the model cache like spec.model, or a file:///path",
                field_path=".draftModel",
            ),
        )
    )

    method: spec.Method = Field(
        description="ngram: prompt lookup, drafts copied from earlier in the prompt and output (pays on code edits, "
        "summaries with quotes, retrieval answers); draft: a smaller model with the same tokenizer (draftModel), "
        "served in the same process."
    )
    num_tokens: int = Field(
        default=spec.DEFAULT_NUM_TOKENS,
        ge=spec.MIN_NUM_TOKENS,
        le=spec.MAX_NUM_TOKENS,
        description="Tokens drafted per step.",
    )
    draft_model: str | None = Field(
        default=None,
        pattern=MODEL_URI_PATTERN,
        max_length=1024,
        description="The draft model (method draft only), with the model's tokenizer: hf://, s3://, gs:// or "
        "https:// (fetched after spec.model by the same init container, into the same cache, with "
        "model.credentialsSecret; at the store's default revision), or file:///path to a .gguf file or an HF "
        "directory in the image or on the node.",
    )
    max_batch_size: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="No drafts in a step with more running requests than this (speculation costs throughput under "
        "load); default: the runtime's.",
    )


class RuntimeSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.engine == oldSelf.engine",
                "runtime.engine is immutable: switching engines changes flags, metrics and images; "
                "create a new deployment",
                field_path=".engine",
            )
        )
    )

    engine: Engine = Field(default="infleet", description="infleet (the project's runtime) or vllm.")
    image: str | None = Field(
        default=None,
        max_length=512,
        pattern=r"^[^\s]+$",
        description="Container image; defaults to infleet/runtime:<version> or vllm/vllm-openai:<version>.",
    )
    max_batch_tokens: int = Field(default=8192, ge=16, le=1_048_576, description="Tokens per engine step.")
    max_model_len: int = Field(default=4096, ge=16, le=1_048_576, description="Longest prompt + completion.")
    prefix_caching: bool = Field(default=True, description="Reuse KV cache blocks across shared prompt prefixes.")
    speculative: Speculative | None = Field(default=None, description="Speculative decoding; off when unset.")
    max_loras: int = Field(
        default=4,
        ge=1,
        le=MAX_ADAPTERS,
        description="With adapters: how many sit in device memory at once (and run in one batch); the rest wait in "
        "host memory, least recently used first out.",
    )
    max_lora_rank: int = Field(
        default=16, ge=1, le=512, description="With adapters: the largest adapter rank the replicas accept."
    )
    resources: Resources | None = None
    env: list[EnvVar] = Field(default_factory=list, max_length=64, description="Extra environment variables.")
    extra_args: list[Annotated[str, Field(max_length=256)]] = Field(
        default_factory=list, max_length=64, description="Extra engine arguments, appended verbatim."
    )


class Parallelism(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                f"self.tensor * self.pipeline <= {MAX_GPUS_PER_REPLICA}",
                f"parallelism.tensor x parallelism.pipeline (GPUs per replica) must be at most {MAX_GPUS_PER_REPLICA}",
                field_path=".tensor",
            )
        )
    )

    tensor: int = Field(default=1, ge=1, le=64, description="Tensor-parallel ranks (split each layer).")
    pipeline: int = Field(default=1, ge=1, le=16, description="Pipeline stages (split the layers).")


MAX_ALLOWED_ACCELERATORS = 8


class Accelerator(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.allowed) || size(self.allowed) == 0 || self.type in self.allowed",
                "accelerator.type must be one of accelerator.allowed (it is the product the deployment starts on)",
                field_path=".type",
            ),
            cel(
                "!has(self.gpusPerNode) || !has(self.allowed) || size(self.allowed) <= 1",
                "accelerator.gpusPerNode describes one product: with several products in accelerator.allowed leave it "
                "unset (it is learnt from each product's nodes)",
                field_path=".gpusPerNode",
            ),
        )
    )

    type: str = Field(
        pattern=GPU_PRODUCT_PATTERN,
        max_length=63,
        description="GPU product, matched against the node label nvidia.com/gpu.product (e.g. NVIDIA-H100-80GB-HBM3).",
    )
    gpus_per_node: int | None = Field(
        default=None,
        ge=1,
        le=16,
        description="GPUs on one node of this type; learnt from the nodes' nvidia.com/gpu.count when unset. A replica "
        "needing more GPUs than this spans several pods (a group).",
    )
    allowed: list[Annotated[str, Field(pattern=GPU_PRODUCT_PATTERN, max_length=63)]] = Field(
        default_factory=list,
        max_length=MAX_ALLOWED_ACCELERATORS,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="GPU products the autoscaler may move the deployment to (quantization.tier auto and scaling "
        "enabled): it picks the product and tier with the lowest $/1M tokens that meets the SLO and "
        "quantization.maxQualityLoss, priced from the chart's gpuPrices. Empty: type only.",
    )

    @field_validator("allowed")
    @classmethod
    def _unique(cls, allowed: list[str]) -> list[str]:
        """The schema says list-type set (the API server rejects duplicates); say the same here."""
        if len(set(allowed)) != len(allowed):
            raise ValueError("accelerator.allowed must not name a product twice")
        return allowed

    @model_validator(mode="after")
    def _starting_product_allowed(self) -> Accelerator:
        """The CEL rule, said again for specs parsed outside the API server."""
        if self.allowed and self.type not in self.allowed:
            raise ValueError("accelerator.type must be one of accelerator.allowed")
        return self

    def products(self) -> list[str]:
        """The products the deployment may run on, the starting one first."""
        return [self.type, *(p for p in self.allowed if p != self.type)]


class Quantization(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.tier == 'auto' || self.tier in self.allowed",
                "quantization.tier must be 'auto' or one of quantization.allowed",
                field_path=".tier",
            )
        )
    )

    tier: Literal["auto", "bf16", "fp8", "int8", "int4"] = Field(
        default="auto", description="Weight precision; auto lets the autoscaler choose among allowed."
    )
    allowed: list[Tier] = Field(
        default_factory=lambda: list(TIERS),
        min_length=1,
        max_length=4,
        json_schema_extra={"x-kubernetes-list-type": "set", "default": list(TIERS)},
        description="Tiers the autoscaler may choose.",
    )
    max_quality_loss: float = Field(
        default=0.02,
        ge=0.0,
        le=1.0,
        description="Largest quality loss accepted against bf16 (fraction, e.g. 0.02 = 2% greedy mismatch).",
    )

    @field_validator("allowed")
    @classmethod
    def _unique(cls, allowed: list[Tier]) -> list[Tier]:
        """The schema says list-type set (the API server rejects duplicates); say the same here."""
        if len(set(allowed)) != len(allowed):
            raise ValueError("tiers must not repeat")
        return allowed


class SLO(ApiModel):
    ttft_p99: Duration | None = Field(default=None, description="Time to first token, 99th percentile.")
    tpot_p99: Duration | None = Field(default=None, description="Time per output token (inter-token), p99.")
    e2e_p99: Duration | None = Field(default=None, description="End-to-end request latency, p99.")
    objective_percent: float = Field(
        default=99.0, ge=50.0, le=99.999, description="Share of requests that must meet the targets, in percent."
    )
    budget_period: BudgetPeriod = Field(
        default="30d",
        description="Error budget period: attainment and budget left are computed over it (the chart's rules "
        "compute each of these periods).",
    )

    @property
    def budget_period_seconds(self) -> float:
        return float(self.budget_period[:-1]) * 86400.0


class Cost(ApiModel):
    max_per_million_tokens: float | None = Field(default=None, gt=0, description="Budget in $ per 1M tokens served.")
    gpu_hourly_price: float | None = Field(
        default=None, gt=0, description="$ per GPU-hour; overrides the chart's table."
    )


class Scaling(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.minReplicas <= self.maxReplicas",
                "scaling.minReplicas must be less than or equal to scaling.maxReplicas",
                field_path=".minReplicas",
            )
        )
    )

    enabled: bool = Field(default=False, description="Let the autoscaler set replicas and tier; else spec.replicas.")
    mode: Literal["apply", "advisory"] = Field(
        default="apply",
        description="apply: the autoscaler scales (spec.replicas, status.tier). advisory: it computes and publishes "
        "every decision with its reason (status.desiredReplicas, status.desiredTier, status.scalingReason, Events, "
        "the desired-replicas and desired-tier metrics) and applies none, so it can be watched before it is trusted.",
    )
    min_replicas: int = Field(default=1, ge=0, le=MAX_REPLICAS, description="0 allows scale to zero.")
    max_replicas: int = Field(default=4, ge=1, le=MAX_REPLICAS)
    target_queue_depth: int = Field(default=8, ge=1, le=10_000, description="Waiting requests per replica to aim at.")
    scale_up_stabilization: Duration = Field(default="0s", description="Look-back window before scaling up.")
    scale_down_stabilization: Duration = Field(default="300s", description="Look-back window before scaling down.")
    target_utilization: float = Field(
        default=0.7,
        gt=0.0,
        le=1.0,
        description="Share of one replica's capacity at the SLO (from the tier profile) to plan for; the rest is "
        "headroom for bursts. The autoscaler evaluation tunes it per workload (docs/autoscaler-evaluation.md).",
    )
    forecast_lead: Duration = Field(
        default="0s",
        description="Size for the load forecast this far ahead (Holt's linear trend of tokens/s), so replicas are "
        "ready when the load is: set it to the replicas' cold start (scale-up to Ready). 0s: size for the load now.",
    )


class Routing(ApiModel):
    strategy: Literal["leastOutstanding", "prefixAffinity"] = Field(
        default="leastOutstanding",
        description="How the gateway picks a replica: fewest requests in flight, or prompts sharing a prefix on the "
        "replica that already caches it (with a load bound).",
    )


class ResponseCache(ApiModel):
    """The gateway's exact-match response cache: a deterministic request (temperature 0 or a fixed seed) answered
    again from memory, never computed twice. Entries are scoped by API key and namespace (docs/cost-controls.md)."""

    enabled: bool = Field(default=False, description="Cache this deployment's deterministic non-streamed answers.")
    ttl: Duration = Field(default="10m", description="How long an answer is served from the cache.")
    max_entries: int = Field(
        default=1024, ge=1, le=1_000_000, description="Answers kept per gateway replica; the least recently used go."
    )
    max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        le=16 * 1024 * 1024 * 1024,
        description="Bytes of answers kept per gateway replica; the least recently used go.",
    )


class CascadeValidator(ApiModel):
    """What the first models' answers must satisfy to be returned; an answer that fails escalates."""

    regex: str | None = Field(default=None, max_length=4096, description="The whole answer must match (fullmatch).")
    json_schema: dict[str, Any] | None = Field(
        default=None,
        description="The answer must parse as JSON valid against this JSON Schema.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )

    @field_validator("regex")
    @classmethod
    def _compiles(cls, regex: str | None) -> str | None:
        if regex is not None:
            try:
                re.compile(regex)
            except re.error as e:
                raise ValueError(f"not a regular expression: {e}") from None
        return regex


class Cascade(ApiModel):
    """A model name the gateway serves by asking this deployment first and escalating to larger models only when
    the answer looks unsure (docs/cost-controls.md#cascades)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.minMeanLogprob) || has(self.minFirstTokenLogprob) || has(self.validator)",
                "a cascade needs an escalation signal: minMeanLogprob, minFirstTokenLogprob or validator",
                field_path=".minMeanLogprob",
            )
        )
    )

    name: str = Field(
        pattern=ADAPTER_NAME_PATTERN,
        max_length=63,
        description="The model name clients send; it must not be a served name or adapter in the namespace.",
    )
    escalate_to: list[str] = Field(
        min_length=1,
        max_length=4,
        description="Served names of deployments in this namespace to escalate to, in order (cheapest first).",
    )
    min_mean_logprob: float | None = Field(
        default=None,
        le=0,
        description="Escalate when the answer's mean token logprob is below this (infleet cascade calibrate finds it).",
    )
    min_first_token_logprob: float | None = Field(
        default=None, le=0, description="Escalate when the answer's first token's logprob is below this."
    )
    validator: CascadeValidator | None = None


class GatewaySpec(ApiModel):
    response_cache: ResponseCache = Field(default_factory=ResponseCache)
    cascade: Cascade | None = Field(
        default=None, description="Serve a cascade: this deployment answers first, escalateTo only when unsure."
    )


class InferenceDeploymentSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.accelerator.gpusPerNode) || self.accelerator.gpusPerNode < 1"
                " || self.parallelism.tensor * self.parallelism.pipeline <= self.accelerator.gpusPerNode"
                " || (self.parallelism.tensor * self.parallelism.pipeline) % self.accelerator.gpusPerNode == 0",
                "parallelism.tensor x parallelism.pipeline must fit on one node or be a multiple of "
                "accelerator.gpusPerNode (a replica spans whole nodes)",
                field_path=".parallelism",
            ),
            cel(
                "!has(self.adapters) || !has(self.model.servedName)"
                " || self.adapters.all(a, a.name != self.model.servedName)",
                "adapters[].name must differ from model.servedName: clients choose between them by name",
                field_path=".adapters",
            ),
            cel(
                "!has(self.adapters) || size(self.adapters) == 0 || self.runtime.engine == 'vllm'"
                " || (self.parallelism.tensor == 1 && self.parallelism.pipeline == 1)",
                "adapters are served by the infleet engine without tensor or pipeline parallelism only (yet); "
                "use engine vllm or one GPU per replica",
                field_path=".adapters",
            ),
            cel(
                "!has(self.gateway.cascade) || !has(self.model.servedName)"
                " || self.gateway.cascade.name != self.model.servedName",
                "gateway.cascade.name must differ from model.servedName: clients choose between them by name",
                field_path=".gateway.cascade.name",
            ),
            cel(
                "!has(self.accelerator.allowed) || size(self.accelerator.allowed) <= 1"
                " || !has(self.quantization) || !has(self.quantization.tier) || self.quantization.tier == 'auto'",
                "accelerator.allowed with several products needs quantization.tier auto: the autoscaler chooses the "
                "product and the tier together",
                field_path=".accelerator.allowed",
            ),
        )
    )

    model: ModelSource
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    parallelism: Parallelism = Field(default_factory=Parallelism)
    accelerator: Accelerator
    quantization: Quantization = Field(default_factory=Quantization)
    slo: SLO = Field(default_factory=SLO)
    cost: Cost = Field(default_factory=Cost)
    scaling: Scaling = Field(default_factory=Scaling)
    routing: Routing = Field(default_factory=Routing)
    gateway: GatewaySpec = Field(default_factory=GatewaySpec, description="What the gateway does for this deployment.")
    adapters: list[Adapter] = Field(
        default_factory=list,
        max_length=MAX_ADAPTERS,
        description="LoRA adapters of the model, each served as its own model name by every replica (vLLM-style "
        "multi-LoRA: requests for different adapters share one batch). Names are unique.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    replicas: int = Field(
        default=1,
        ge=0,
        le=MAX_REPLICAS,
        description="Replicas when scaling is off (the scale subresource: kubectl scale idep NAME --replicas=3).",
    )

    @field_validator("adapters")
    @classmethod
    def _unique_adapter_names(cls, adapters: list[Adapter]) -> list[Adapter]:
        names = [a.name for a in adapters]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"adapters[].name must be unique; repeated: {', '.join(duplicates)}")
        return adapters

    @property
    def gpus_per_replica(self) -> int:
        return self.parallelism.tensor * self.parallelism.pipeline

    def on(self, product: str) -> InferenceDeploymentSpec:
        """This spec with its replicas on `product` (one of accelerator.allowed): what the reconcile renders."""
        return self.model_copy(update={"accelerator": self.accelerator.model_copy(update={"type": product})})

    @property
    def tier(self) -> Tier:
        """The tier to run now: the explicit one, else the first allowed (the autoscaler refines `auto`)."""
        if self.quantization.tier != "auto":
            return self.quantization.tier
        return self.quantization.allowed[0]


# ---- status -------------------------------------------------------------------------------------------------------


class Attainment(ApiModel):
    """Share of requests (percent) within each SLI's threshold over the observation window, counted exactly."""

    ttft: float | None = None
    tpot: float | None = None
    e2e: float | None = None


class Observed(ApiModel):
    """What the operator's observation loop last read from Prometheus (for every deployment, scaled or not)."""

    ttft_p99_seconds: float | None = None
    tpot_p99_seconds: float | None = None
    e2e_p99_seconds: float | None = None
    queue_depth: float | None = None
    tokens_per_second: float | None = None
    attainment_percent: Attainment | None = None
    window: str | None = Field(default=None, description="The range the figures are computed over, e.g. 1m.")


class ReplicaAdapters(ApiModel):
    """The LoRA adapters one replica serves, as it answered the operator's last look (operator/adapters.py)."""

    pod: str
    loaded: list[str] = Field(default_factory=list, description="The adapter names it serves now")
    message: str | None = Field(default=None, description="Why an adapter of spec.adapters is not loaded there")


# Every status write goes through this model (`patch` -> `wire`): a field the CRD does not declare fails in the
# operator instead of being pruned silently by the API server.
class InferenceDeploymentStatus(ApiModel):
    observed_generation: int | None = None
    replicas: int = 0
    ready_replicas: int = 0
    updated_replicas: int = 0
    selector: str = ""
    tier: str | None = None
    tier_reason: str | None = None
    gpus_per_replica: int | None = None
    pods_per_replica: int | None = None
    revision: str | None = Field(default=None, description="Hash of the pod template now rolled out")
    workload: str | None = Field(
        default=None, description="Deployment/<name>, LeaderWorkerSet/<name> or StatefulSet/<name>-<rev>-g0..N"
    )
    endpoint: str | None = None
    observed: Observed | None = None
    cost_per_million_tokens: float | None = None
    desired_replicas: int | None = Field(default=None, description="The autoscaler's latest replica decision")
    desired_tier: str | None = Field(default=None, description="The autoscaler's latest tier decision")
    accelerator: str | None = Field(
        default=None,
        description="The GPU product the replicas run on: accelerator.type, or the autoscaler's choice among "
        "accelerator.allowed",
    )
    accelerator_reason: str | None = Field(default=None, description="Why the replicas run on that product")
    desired_accelerator: str | None = Field(default=None, description="The autoscaler's latest accelerator decision")
    scaling_reason: str | None = Field(default=None, description="Why the autoscaler decided as it did")
    adapters: list[ReplicaAdapters] | None = Field(
        default=None,
        description="Per ready replica, the LoRA adapters it serves (the infleet engine loads spec.adapters live)",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["pod"]},
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )

    @classmethod
    def patch(cls, fields: Mapping[str, Any]) -> InferenceDeploymentStatus:
        """A partial status (camelCase keys, as on the wire), validated field by field; unset keys stay unset."""
        return cls.model_validate({k: v for k, v in fields.items() if v is not None})

    def wire(self) -> dict[str, Any]:
        """Only the fields this write sets: each writer owns its fields under server-side apply."""
        return self.model_dump(by_alias=True, exclude_unset=True, exclude_none=True, mode="json")


class InferenceDeployment(ApiModel):
    """The whole object as the operator sees it (metadata is Kubernetes' own and stays a plain dict)."""

    model_config = ConfigDict(extra="ignore")

    api_version: str = API_VERSION
    kind: str = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: InferenceDeploymentSpec
    status: InferenceDeploymentStatus | None = None
