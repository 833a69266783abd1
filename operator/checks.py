"""What only the operator can judge: facts about the cluster and the engines that no OpenAPI rule can see.

Each check returns (reason, message) problems; the handler turns them into a `Degraded` condition and one
Warning event per new reason, and still creates the objects (a cluster autoscaler may add the missing nodes,
a PVC may appear later; the periodic re-check clears the condition when they do).
"""

from __future__ import annotations

from collections.abc import Mapping

from infleet.operator.api import InferenceDeploymentSpec
from infleet.operator.resources import VLLM_TIER_FLAGS, Layout, cache_claim_name

Problem = tuple[str, str]

# Ampere and older have no FP8 tensor cores (Hopper, Ada and Blackwell do).
NO_FP8_PRODUCTS = ("A100", "A10", "A10G", "A30", "A40", "V100", "T4", "P100", "P4")


def supports_fp8(product: str) -> bool:
    tokens = product.upper().replace("_", "-").split("-")
    return not any(t in NO_FP8_PRODUCTS for t in tokens)


def tier_problem(spec: InferenceDeploymentSpec, tier: str) -> Problem | None:
    if tier == "fp8" and not supports_fp8(spec.accelerator.type):
        return (
            "TierUnsupportedByAccelerator",
            f"quantization tier fp8 needs FP8 tensor cores; {spec.accelerator.type} has none",
        )
    if spec.runtime.engine == "vllm" and tier not in VLLM_TIER_FLAGS:
        return ("TierUnsupportedByEngine", f"quantization tier {tier} has no in-flight equivalent in vLLM")
    return None


def choose_tier(
    spec: InferenceDeploymentSpec, current: str | None, current_reason: str | None = None
) -> tuple[str, str]:
    """The tier to run and why: an explicit spec.quantization.tier wins; under `auto`, the autoscaler's last choice
    (status.tier) stays, with the autoscaler's reason, while it is allowed and runnable, else the first allowed tier
    that runs here."""
    q = spec.quantization
    if q.tier != "auto":
        return q.tier, "set in spec.quantization.tier"
    if current in q.allowed and tier_problem(spec, current) is None:
        return current, current_reason or "kept the autoscaler's choice"
    for tier in q.allowed:
        if tier_problem(spec, tier) is None:
            return tier, f"first allowed tier runnable on {spec.accelerator.type} with {spec.runtime.engine}"
    return q.allowed[0], "no allowed tier is runnable here (see Degraded)"


def running_product(spec: InferenceDeploymentSpec, current: str | None) -> str:
    """The GPU product the replicas run on: the autoscaler's choice (status.accelerator) while accelerator.allowed
    still names it, else accelerator.type (a product removed from allowed is left at the next reconcile)."""
    return current if current and current in spec.accelerator.allowed else spec.accelerator.type


def gpus_per_node(spec: InferenceDeploymentSpec, node_gpus: Mapping[str, int]) -> int:
    """spec.accelerator.gpusPerNode, else the largest GPU count among nodes of that product (8 if none)."""
    if spec.accelerator.gpus_per_node:
        return spec.accelerator.gpus_per_node
    return node_gpus.get(spec.accelerator.type) or 8


def problems(
    spec: InferenceDeploymentSpec,
    tier: str,
    lay: Layout,
    node_gpus: Mapping[str, int],
    missing_claim: tuple[str, str] | None = None,
) -> list[Problem]:
    """`node_gpus`: GPU product -> the most allocatable GPUs on one node of that product."""
    found: list[Problem] = []
    product = spec.accelerator.type
    if product not in node_gpus:
        have = ", ".join(sorted(node_gpus)) or "none"
        found.append(
            (
                "NoMatchingNodes",
                f"no node has nvidia.com/gpu.product={product} (accelerator.type); products in the cluster: {have}",
            )
        )
    elif node_gpus[product] < lay.gpus_per_pod:
        found.append(
            (
                "InsufficientGPUsPerNode",
                f"a pod needs {lay.gpus_per_pod} GPUs but nodes with {product} have at most {node_gpus[product]} "
                "(parallelism.tensor x parallelism.pipeline, accelerator.gpusPerNode)",
            )
        )
    if lay.grouped and lay.gpus_per_replica % lay.gpus_per_pod:
        found.append(
            (
                "ParallelismDoesNotFitNodes",
                f"{lay.gpus_per_replica} GPUs per replica do not split into whole nodes of {lay.gpus_per_pod} GPUs "
                "(parallelism.tensor x parallelism.pipeline)",
            )
        )
    if lay.grouped and spec.runtime.engine == "vllm":
        found.append(
            (
                "MultiNodeUnsupportedByEngine",
                "runtime.engine vllm runs multi-node replicas through Ray, which infleet does not set up; "
                "keep parallelism within one node or use engine infleet",
            )
        )
    if missing_claim:
        field, claim = missing_claim
        found.append(("ModelVolumeNotFound", f"{field} names PersistentVolumeClaim {claim!r}, which does not exist"))
    problem = tier_problem(spec, tier)
    if problem:
        found.append(problem)
    return found


def claims(spec: InferenceDeploymentSpec) -> list[tuple[str, str]]:
    """(field, claim) for every PersistentVolumeClaim the pods mount: the model's own, and the model cache's."""
    out = []
    uri = spec.model.uri
    if uri.startswith("pvc://"):
        out.append(("model.uri", uri.removeprefix("pvc://").partition("/")[0]))
    if spec.model.cache is not None:
        out.append(("model.cache.claimName", spec.model.cache.claim_name))
    elif claim := cache_claim_name(spec):
        out.append(("the chart's models.cache.claimName", claim))
    return out
