"""The model's shape (`ModelConfig`, shared by the loaders, the model and the engine) and how the engine runs it
(`EngineConfig`: device, kernels, memory, batching).

`ModelConfig`'s field names follow Hugging Face's `config.json` for Llama so that a reader can map one onto the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from infleet.api import speculative as spec
from infleet.runtime.engine.limits import DEFAULT_MAX_PREFILL_TOKENS, DEFAULT_SPECULATIVE_MAX_BATCH_SIZE

SUPPORTED_ARCHITECTURES = (
    "llama", "mistral", "smollm", "qwen2", "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
)  # fmt: skip


@dataclass
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # biases on q/k/v (Qwen2)
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    architecture: str = "llama"
    name: str = "model"

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )

    @classmethod
    def from_hf_dict(cls, cfg: dict[str, Any], name: str = "model") -> ModelConfig:
        """Build from a Hugging Face `config.json` dict; raises ValueError for architectures this model cannot run."""
        archs = cfg.get("architectures") or [cfg.get("model_type", "?")]
        if (
            not any(a in SUPPORTED_ARCHITECTURES for a in archs)
            and cfg.get("model_type") not in SUPPORTED_ARCHITECTURES
        ):
            raise ValueError(f"unsupported architecture {archs[0]!r} (supported: Llama, Mistral and Qwen2 decoders)")
        heads = int(cfg["num_attention_heads"])
        # transformers 5 writes `rope_parameters` (theta included); older versions `rope_theta` + `rope_scaling`
        rope = dict(cfg.get("rope_scaling") or cfg.get("rope_parameters") or {})
        eos = cfg.get("eos_token_id")
        eos_ids = [] if eos is None else ([int(eos)] if isinstance(eos, int) else [int(e) for e in eos])
        return cls(
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=int(cfg["hidden_size"]),
            intermediate_size=int(cfg["intermediate_size"]),
            num_hidden_layers=int(cfg["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
            rope_theta=float(cfg.get("rope_theta") or rope.get("rope_theta") or 10000.0),
            rope_scaling=rope if rope.get("rope_type", rope.get("type", "default")) != "default" else None,
            max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", cfg.get("model_type") == "qwen2")),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=eos_ids,
            architecture="llama",
            name=name,
        )


# --- how the runtime runs a model: device, kernels, memory ---------------------------------------------------------
DEVICES = ("auto", "cpu", "cuda")
KERNEL_BACKENDS = ("auto", "triton", "torch")
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
# On a CPU the KV cache takes this share of the memory limit (the cgroup's, else the machine's) by default.
DEFAULT_CPU_KV_SHARE = 0.1
# Decode batch sizes captured as CUDA graphs; a decode batch is padded up to the next one (larger runs eagerly).
CUDA_GRAPH_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
# The whole-number settings that must be at least 1, and the flag each one comes from (named in the error).
POSITIVE_FLAGS = {
    "block_size": "block_size",  # no flag: set in code only
    "num_kv_blocks": "--num-kv-blocks",
    "max_batch_tokens": "--max-batch-tokens",
    "max_prefill_tokens": "--max-prefill-tokens-per-step",
    "max_model_len": "--max-model-len",
    "max_num_seqs": "--max-num-seqs",
    "max_waiting": "--max-waiting",
    "micro_batches_per_stage": "--micro-batches-per-stage",
    "speculative_max_batch_size": "--speculative-max-batch-size",
    "threads": "--threads",
    "max_loras": "--max-loras",
    "max_lora_rank": "--max-lora-rank",
}


class DeviceUnavailable(RuntimeError):
    """`--device cuda` (or `--kernels triton`) asked for hardware this process cannot use; one line says why."""


@dataclass
class EngineConfig:
    """Every engine setting, built once (from the flags in `runtime/__main__.py`, or from kwargs) and passed whole.

    `device` and `kernels` hold what was asked ("auto" allowed) until `resolve()` turns them into what is used.
    Bad values raise ValueError with one line naming the flag, before anything is loaded.
    """

    model: str = ""  # a GGUF file or an HF directory (empty when the engine is handed a loaded model)
    tier: str = "bf16"
    device: str = "auto"
    kernels: str = "auto"
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION
    kv_cache_memory: int | None = None  # bytes for the KV cache on a CPU; None: DEFAULT_CPU_KV_SHARE of the limit
    enforce_eager: bool = False  # True: no CUDA graphs for decode
    block_size: int = 16
    num_kv_blocks: int | None = None  # None: sized from the memory budget
    prefix_caching: bool = True
    max_batch_tokens: int = 2048  # token budget of one step
    max_prefill_tokens: int | None = DEFAULT_MAX_PREFILL_TOKENS  # prompt tokens per step at most
    max_model_len: int | None = None  # None: the model's
    max_num_seqs: int = 64  # sequences in one batch at most
    max_waiting: int = 256  # the waiting queue's bound (beyond it: QueueFull, HTTP 429)
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    micro_batches_per_stage: int = 1
    speculative_method: str | None = None  # None: no speculative decoding; "ngram": prompt lookup; "draft": a model
    speculative_num_tokens: int = spec.DEFAULT_NUM_TOKENS  # tokens drafted per step
    speculative_draft_model: str | None = None  # method "draft" only: a GGUF file or an HF directory
    speculative_max_batch_size: int = DEFAULT_SPECULATIVE_MAX_BATCH_SIZE  # more running decodes: no drafts
    threads: int | None = None  # intra-op threads; None: OMP_NUM_THREADS, else the pod's CPU limit (threads.py)
    enable_lora: bool = False  # serve LoRA adapters (runtime/lora/): the projections get adapter slots
    max_loras: int = 4  # adapters resident in the slots (and distinct adapters in one batch) at most
    max_lora_rank: int = 16  # the largest adapter rank accepted; slots are padded to it
    lora_modules: tuple[tuple[str, str], ...] = ()  # (name, path or URI) loaded at start
    model_cache: str | None = None  # where remote adapter URIs are fetched to (the model fetcher's cache)

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.kernels not in KERNEL_BACKENDS:
            raise ValueError(f"--kernels must be one of {', '.join(KERNEL_BACKENDS)}, got {self.kernels!r}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"--gpu-memory-utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.kv_cache_memory is not None and self.kv_cache_memory < 1:
            raise ValueError(f"--kv-cache-memory must be a positive number of bytes, got {self.kv_cache_memory}")
        if self.tensor_parallel < 1 or self.pipeline_parallel < 1:
            raise ValueError("--tensor-parallel and --pipeline-parallel must be at least 1")
        for name, flag in POSITIVE_FLAGS.items():
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{flag} must be at least 1")
        if self.threads is not None and (self.tensor_parallel > 1 or self.pipeline_parallel > 1):
            raise ValueError("--threads applies to a single process; parallel ranks read INFLEET_RANK_THREADS")
        self._check_speculative()
        self._check_lora()

    def _check_lora(self) -> None:
        if self.lora_modules and not self.enable_lora:
            raise ValueError("--lora-modules needs --enable-lora")
        if self.enable_lora and (self.tensor_parallel > 1 or self.pipeline_parallel > 1):
            raise ValueError("--enable-lora is not supported with --tensor-parallel or --pipeline-parallel yet")
        names = [name for name, _ in self.lora_modules]
        if len(set(names)) != len(names):
            raise ValueError(f"--lora-modules: adapter names must be unique, got {names}")

    def _check_speculative(self) -> None:
        method = self.speculative_method
        if method is not None and method not in spec.METHODS:
            raise ValueError(f"--speculative-method must be one of {', '.join(spec.METHODS)}, got {method!r}")
        k = self.speculative_num_tokens
        if not spec.MIN_NUM_TOKENS <= k <= spec.MAX_NUM_TOKENS:
            raise ValueError(
                f"--speculative-num-tokens must be between {spec.MIN_NUM_TOKENS} and {spec.MAX_NUM_TOKENS}, got {k}"
            )
        if method == "draft" and not self.speculative_draft_model:
            raise ValueError("--speculative-draft-model is required with --speculative-method draft")
        if method != "draft" and self.speculative_draft_model:
            raise ValueError("--speculative-draft-model is only used with --speculative-method draft")
        if method is not None and (self.tensor_parallel > 1 or self.pipeline_parallel > 1):
            raise ValueError("--speculative-method is not supported with --tensor-parallel or --pipeline-parallel yet")

    def resolve(self) -> EngineConfig:
        """Concrete `device` ("cpu"/"cuda") and `kernels` ("triton"/"torch"); DeviceUnavailable when impossible."""
        import os

        import torch

        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device == "cuda" and not torch.cuda.is_available():
            reason = "this PyTorch build has no CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            raise DeviceUnavailable(f"--device cuda: {reason} (torch.cuda.is_available() is False)")
        kernels = self.kernels
        if kernels == "auto":
            kernels = "triton" if device == "cuda" else "torch"
        elif kernels == "triton" and device == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1":
            raise DeviceUnavailable("--kernels triton on CPU runs only under TRITON_INTERPRET=1 (Triton's interpreter)")
        if kernels == "triton" and device == "cpu" and self.tier == "fp8":  # numpy has no e4m3 to load into
            raise DeviceUnavailable("--tier fp8 with --kernels triton needs a GPU (the interpreter cannot load fp8)")
        from dataclasses import replace

        return replace(self, device=device, kernels=kernels)

    @property
    def compute_dtype_name(self) -> str:
        return compute_dtype_name(self.tier, self.device)


def compute_dtype_name(tier: str, device: str) -> str:
    """The dtype a tier's activations (and KV cache) are served in: bf16 for every tier on a GPU; on a CPU bf16 for
    the bf16 tier and float32 for the weight-only tiers (PyTorch's CPU int8/int4 kernels round activations to bf16
    inside the call)."""
    return "bfloat16" if tier == "bf16" or device == "cuda" else "float32"


def memory_limit_bytes() -> int:
    """The container's memory limit (cgroup v2, then v1), else the machine's memory."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # "max" or a huge number: no limit
            return int(text)
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise OSError("cannot read the memory limit (no cgroup limit and no /proc/meminfo)")
