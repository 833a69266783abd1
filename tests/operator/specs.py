"""Spec fixtures shared by the operator tests: a good spec, and the table of bad ones.

Each bad spec is either rejected by the API server (OpenAPI bounds, enums, patterns, CEL rules, strict field
validation) with a message naming the field, or accepted and turned into `Degraded` with a reason by the operator.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

FAKE_IMAGE = "registry.local/fake-runtime:1"  # not an infleet image: KWOK fakes the pod and marks it Ready


def good_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct", "servedName": "smollm2"},
        "runtime": {"image": FAKE_IMAGE},
        "accelerator": {"type": "NVIDIA-L4"},
        "replicas": 1,
    }
    spec.update(overrides)
    return spec


def with_path(spec: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Set `a.b.c` in a copy of spec; value DELETE removes the key."""
    out = copy.deepcopy(spec)
    node = out
    *parents, last = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    if value is DELETE:
        node.pop(last, None)
    else:
        node[last] = value
    return out


DELETE = object()


@dataclass(frozen=True)
class BadSpec:
    name: str
    changes: dict[str, Any]  # path -> value applied to good_spec()
    field: str  # what the API server's message must name, or the Degraded reason
    outcome: str = "rejected"  # "rejected" | "rejected-update" | "degraded"
    update: dict[str, Any] = field(default_factory=dict)  # for rejected-update: changes applied after creation
    cel: bool = False  # checked by a CEL rule (pydantic alone cannot see it)

    def spec(self) -> dict[str, Any]:
        spec = good_spec()
        for path, value in self.changes.items():
            spec = with_path(spec, path, value)
        return spec

    def updated(self) -> dict[str, Any]:
        spec = self.spec()
        for path, value in self.update.items():
            spec = with_path(spec, path, value)
        return spec


BAD_SPECS: list[BadSpec] = [
    BadSpec("negative-replicas", {"replicas": -1}, "spec.replicas"),
    BadSpec("too-many-replicas", {"replicas": 5000}, "spec.replicas"),
    BadSpec("min-above-max", {"scaling": {"minReplicas": 5, "maxReplicas": 2}}, "minReplicas", cel=True),
    BadSpec("tier-not-allowed", {"quantization": {"tier": "fp8", "allowed": ["bf16"]}}, "quantization.tier", cel=True),
    BadSpec("unknown-tier", {"quantization.tier": "fp4"}, "spec.quantization.tier"),
    BadSpec("zero-tensor", {"parallelism": {"tensor": 0}}, "spec.parallelism.tensor"),
    BadSpec("too-many-gpus", {"parallelism": {"tensor": 64, "pipeline": 16}}, "spec.parallelism.tensor", cel=True),
    BadSpec(
        "replica-not-whole-nodes",
        {"parallelism": {"tensor": 8, "pipeline": 3}, "accelerator.gpusPerNode": 16},
        "spec.parallelism",
        cel=True,
    ),
    BadSpec(
        "accelerator-type-not-allowed",
        {"accelerator": {"type": "NVIDIA-H100-80GB-HBM3", "allowed": ["NVIDIA-L4", "NVIDIA-A100-SXM4-80GB"]}},
        "accelerator.type must be one of accelerator.allowed",
        cel=True,
    ),
    BadSpec("accelerator-allowed-twice", {"accelerator.allowed": ["NVIDIA-L4", "NVIDIA-L4"]}, "accelerator.allowed"),
    BadSpec(
        "accelerator-allowed-bad-product", {"accelerator.allowed": ["NVIDIA-L4", "L4 GPU!"]}, "accelerator.allowed"
    ),
    BadSpec(
        "accelerator-several-with-gpus-per-node",
        {"accelerator": {"type": "NVIDIA-L4", "allowed": ["NVIDIA-L4", "NVIDIA-A100-SXM4-80GB"], "gpusPerNode": 8}},
        "accelerator.gpusPerNode describes one product",
        cel=True,
    ),
    BadSpec(
        "accelerator-several-fixed-tier",
        {
            "accelerator.allowed": ["NVIDIA-L4", "NVIDIA-A100-SXM4-80GB"],
            "quantization": {"tier": "bf16", "allowed": ["bf16"]},
        },
        "accelerator.allowed with several products needs quantization.tier auto",
        cel=True,
    ),
    BadSpec("duration-words", {"slo": {"ttftP99": "2 seconds"}}, "spec.slo.ttftP99"),
    BadSpec("objective-over-100", {"slo": {"objectivePercent": 101}}, "spec.slo.objectivePercent"),
    BadSpec("unknown-engine", {"runtime.engine": "tgi"}, "spec.runtime.engine"),
    BadSpec("ftp-model", {"model.uri": "ftp://models.example.com/llama"}, "spec.model.uri"),
    BadSpec("no-model", {"model": DELETE}, "spec.model"),
    BadSpec("no-accelerator", {"accelerator": DELETE}, "spec.accelerator"),
    BadSpec("zero-batch-tokens", {"runtime.maxBatchTokens": 0}, "spec.runtime.maxBatchTokens"),
    BadSpec("quality-loss-over-1", {"quantization": {"maxQualityLoss": 1.5}}, "spec.quantization.maxQualityLoss"),
    BadSpec("free-budget", {"cost": {"maxPerMillionTokens": 0}}, "spec.cost.maxPerMillionTokens"),
    BadSpec("window-words", {"scaling": {"scaleDownStabilization": "soon"}}, "spec.scaling.scaleDownStabilization"),
    BadSpec("zero-gpus-per-node", {"accelerator.gpusPerNode": 0}, "spec.accelerator.gpusPerNode"),
    BadSpec("gpu-type-with-space", {"accelerator.type": "NVIDIA H100"}, "spec.accelerator.type"),
    BadSpec("memory-words", {"runtime.resources": {"memory": "lots"}}, "spec.runtime.resources.memory"),
    BadSpec("no-allowed-tiers", {"quantization": {"allowed": []}}, "spec.quantization.allowed"),
    BadSpec("duplicate-tiers", {"quantization": {"allowed": ["bf16", "bf16"]}}, "spec.quantization.allowed"),
    BadSpec("zero-queue-target", {"scaling": {"targetQueueDepth": 0}}, "spec.scaling.targetQueueDepth"),
    BadSpec("utilization-over-one", {"scaling": {"targetUtilization": 1.5}}, "spec.scaling.targetUtilization"),
    BadSpec("lead-words", {"scaling": {"forecastLead": "a bit"}}, "spec.scaling.forecastLead"),
    BadSpec("unknown-field", {"replicaCount": 3}, "replicaCount"),
    BadSpec("bad-env-name", {"runtime.env": [{"name": "1BAD", "value": "x"}]}, "spec.runtime.env[0].name"),
    BadSpec("speculative-k-too-big", {"runtime.speculative": {"method": "ngram", "numTokens": 9}}, "numTokens"),
    BadSpec("speculative-k-zero", {"runtime.speculative": {"method": "ngram", "numTokens": 0}}, "numTokens"),
    BadSpec("speculative-unknown-method", {"runtime.speculative": {"method": "medusa"}}, "speculative.method"),
    BadSpec("speculative-draft-no-model", {"runtime.speculative": {"method": "draft"}}, "draftModel", cel=True),
    BadSpec(
        "speculative-ngram-with-model",
        {"runtime.speculative": {"method": "ngram", "draftModel": "hf://org/small"}},
        "draftModel",
        cel=True,
    ),
    BadSpec(
        "speculative-draft-on-a-claim",
        {"runtime.speculative": {"method": "draft", "draftModel": "pvc://models/small"}},
        "speculative.draftModel cannot be a pvc:// URI",
        cel=True,
    ),
    BadSpec(
        "served-name-changed",
        {},
        "servedName",
        outcome="rejected-update",
        update={"model.servedName": "other"},
        cel=True,
    ),
    BadSpec("engine-changed", {}, "engine", outcome="rejected-update", update={"runtime.engine": "vllm"}, cel=True),
    # accepted by the API server; only the operator can judge these
    BadSpec("gpu-type-not-in-fleet", {"accelerator.type": "NVIDIA-B200"}, "NoMatchingNodes", outcome="degraded"),
    BadSpec(
        "pod-wider-than-nodes",
        {"accelerator": {"type": "NVIDIA-H100-80GB-HBM3", "gpusPerNode": 16}, "parallelism": {"tensor": 16}},
        "InsufficientGPUsPerNode",
        outcome="degraded",
    ),
    BadSpec(
        "missing-model-volume", {"model.uri": "pvc://no-such-claim/llama"}, "ModelVolumeNotFound", outcome="degraded"
    ),
    BadSpec(
        "fp8-on-a100",
        {"accelerator.type": "NVIDIA-A100-SXM4-80GB", "quantization": {"tier": "fp8"}},
        "TierUnsupportedByAccelerator",
        outcome="degraded",
    ),
    BadSpec(
        "vllm-int8",
        {"runtime.engine": "vllm", "quantization": {"tier": "int8"}},
        "TierUnsupportedByEngine",
        outcome="degraded",
    ),
    BadSpec(
        "vllm-multi-node",
        {"runtime.engine": "vllm", "accelerator": {"type": "NVIDIA-H100-80GB-HBM3"}, "parallelism": {"tensor": 16}},
        "MultiNodeUnsupportedByEngine",
        outcome="degraded",
    ),
    BadSpec("adapter-bad-name", {"adapters": [{"name": "-sql", "uri": "file:///a"}]}, "spec.adapters[0].name"),
    BadSpec("adapter-bad-uri", {"adapters": [{"name": "sql", "uri": "https://x/a.gguf"}]}, "spec.adapters[0].uri"),
    BadSpec(
        "adapter-names-repeat",
        {"adapters": [{"name": "sql", "uri": "file:///a"}, {"name": "sql", "uri": "file:///b"}]},
        "spec.adapters[1]",
    ),
    BadSpec(
        "adapter-is-served-name", {"adapters": [{"name": "smollm2", "uri": "file:///a"}]}, "spec.adapters", cel=True
    ),
    BadSpec(
        "cascade-without-a-signal",
        {"gateway": {"cascade": {"name": "auto", "escalateTo": ["big"]}}},
        "spec.gateway.cascade.minMeanLogprob",
        cel=True,
    ),
    BadSpec(
        "cascade-is-served-name",
        {"gateway": {"cascade": {"name": "smollm2", "escalateTo": ["big"], "minMeanLogprob": -1}}},
        "spec.gateway.cascade.name",
        cel=True,
    ),
    BadSpec(
        "cascade-positive-threshold",
        {"gateway": {"cascade": {"name": "auto", "escalateTo": ["big"], "minMeanLogprob": 0.5}}},
        "spec.gateway.cascade.minMeanLogprob",
    ),
    BadSpec(
        "adapters-with-tensor-parallelism",
        {"adapters": [{"name": "sql", "uri": "file:///a"}], "parallelism": {"tensor": 2}},
        "spec.adapters",
        cel=True,
    ),
]
