"""How long one engine step takes on a given GPU, model and quantization tier: a roofline.

A continuous-batching step reads every weight once and the KV cache of every sequence in the batch, and does
`2 x parameters` FLOPs per token it processes (prefill chunk tokens plus one per decoding sequence). Its time is
the larger of the memory time and the compute time, at an achievable fraction of peak (MBU, MFU), plus a fixed
per-step overhead (scheduling, kernel launches, sampling). Attention FLOPs are left out: at the context lengths
of the traces here they are a few percent of the matmuls.

For a CPU there are no datasheet numbers worth trusting: `calibrated` builds a device from a measured decode step
time and prefill rate (the runtime's benchmark), so the same simulator replays traces against the real runtime.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Device:
    """Peak numbers per GPU (dense, no sparsity). `None` FLOPs: the tier runs its matmuls in bf16 instead."""

    name: str  # the nvidia.com/gpu.product label value
    memory_bytes: float
    bandwidth: float  # bytes/s
    bf16_flops: float
    fp8_flops: float | None = None
    int8_flops: float | None = None


DEVICES: dict[str, Device] = {
    d.name: d
    for d in (
        Device("NVIDIA-H100-80GB-HBM3", 80e9, 3.35e12, 989e12, 1979e12, 1979e12),
        Device("NVIDIA-A100-SXM4-80GB", 80e9, 2.039e12, 312e12, None, 624e12),
        Device("NVIDIA-L4", 24e9, 300e9, 121e12, 242e12, 242e12),
    )
}
SHORT_NAMES = {"H100": "NVIDIA-H100-80GB-HBM3", "A100": "NVIDIA-A100-SXM4-80GB", "L4": "NVIDIA-L4"}

# bytes per weight (int4 carries a 16-bit scale and zero point per 32 weights) and the matmul precision
TIER_BYTES = {"bf16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5 + 4 / 32}


def device(name: str) -> Device:
    """A device by its product label or short name (H100, A100, L4)."""
    full = SHORT_NAMES.get(name, name)
    if full not in DEVICES:
        raise KeyError(f"unknown GPU {name!r}; known: {', '.join(sorted(DEVICES))} (or H100, A100, L4)")
    return DEVICES[full]


@dataclass(frozen=True)
class ModelShape:
    name: str
    parameters: float
    layers: int
    kv_heads: int
    head_dim: int
    kv_bytes: float = 2.0  # per KV element (bf16 cache)

    @property
    def kv_bytes_per_token(self) -> float:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.kv_bytes


MODELS: dict[str, ModelShape] = {
    m.name: m
    for m in (
        ModelShape("llama-3.1-8b", 8.03e9, 32, 8, 128),
        ModelShape("llama-3.1-70b", 70.6e9, 80, 8, 128),
        ModelShape("smollm2-135m", 134.5e6, 30, 3, 64),
    )
}


@dataclass(frozen=True)
class LatencyModel:
    device: Device
    model: ModelShape
    tier: str = "bf16"
    gpus: int = 1  # tensor parallel: bandwidth, FLOPs and memory add up
    mfu: float = 0.5
    mbu: float = 0.8
    step_overhead: float = 0.004  # seconds per step
    memory_fraction: float = 0.9  # vLLM's gpu_memory_utilization

    def __post_init__(self) -> None:
        if self.tier not in TIER_BYTES:
            raise ValueError(f"unknown tier {self.tier!r}; known: {', '.join(TIER_BYTES)}")

    @property
    def weight_bytes(self) -> float:
        return self.model.parameters * TIER_BYTES[self.tier]

    @property
    def flops(self) -> float:
        """Achievable matmul FLOP/s of the replica in this tier's precision."""
        d = self.device
        peak = {"fp8": d.fp8_flops, "int8": d.int8_flops}.get(self.tier) or d.bf16_flops
        return peak * self.gpus * self.mfu

    @property
    def bandwidth(self) -> float:
        return self.device.bandwidth * self.gpus * self.mbu

    @property
    def kv_capacity_tokens(self) -> int:
        free = self.device.memory_bytes * self.gpus * self.memory_fraction - self.weight_bytes
        if free <= 0:
            return 0
        return int(free / self.model.kv_bytes_per_token)

    def step_time(self, new_tokens: int, decode_seqs: int, context_tokens: int) -> float:
        """One engine step: `new_tokens` prefill tokens, `decode_seqs` decoding sequences, KV read of
        `context_tokens` tokens in total."""
        compute = 2 * self.model.parameters * (new_tokens + decode_seqs) / self.flops
        memory = (self.weight_bytes + self.model.kv_bytes_per_token * context_tokens) / self.bandwidth
        return max(compute, memory) + self.step_overhead

    def prefill_time(self, tokens: int) -> float:
        return self.step_time(tokens, 0, tokens)

    def decode_step_time(self, batch: int, context_tokens: int) -> float:
        return self.step_time(0, batch, context_tokens)

    def chunked_prefill_time(self, tokens: int, chunk: int) -> float:
        """A prompt's prefill alone on an idle replica, `chunk` tokens per step."""
        return sum(self.step_time(min(chunk, tokens - done), 0, done + chunk) for done in range(0, tokens, chunk))

    def longest_prompt_within(self, seconds: float, chunk: int, limit: int = 1 << 20) -> int:
        """The longest prompt whose prefill alone fits in `seconds`: longer ones miss a TTFT SLO of that length
        at any replica count (0 if not even one token fits)."""
        lo, hi = 0, limit
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self.chunked_prefill_time(mid, chunk) <= seconds else (lo, mid - 1)
        return lo

    def capacity(
        self,
        mean_prompt: float,
        mean_output: float,
        tpot_slo: float | None = None,
        ttft_slo: float | None = None,
        max_batch_tokens: int = 2048,
        headroom: float = 0.8,
    ) -> float:
        """Tokens/s (prompt + output) one replica sustains for this request mix while meeting the SLO.

        Steady state at `lam` requests/s with step time t: the batch holds `lam x output x t` decoding
        sequences (Little's law) and each step also prefills `lam x prompt x t` tokens, so t solves
        t = step_time(lam P t, lam O t, lam O t (P + O/2)). The capacity is the largest `lam` whose t stays
        within `headroom` x TPOT SLO, whose prefill fits the step budget, whose prompt prefills within the TTFT
        SLO, whose KV fits, and whose compute stays below `headroom` of saturation (so queues stay short).
        """

        def step(lam: float) -> float | None:
            t = self.step_overhead
            for _ in range(200):
                batch = lam * mean_output * t
                nxt = self.step_time(
                    round(lam * mean_prompt * t), round(batch), round(batch * (mean_prompt + mean_output / 2))
                )
                if abs(nxt - t) < 1e-9:
                    break
                t = nxt
                if t > 60:
                    return None
            return t

        def feasible(lam: float) -> bool:
            t = step(lam)
            if t is None:
                return False
            busy = 2 * self.model.parameters * lam * (mean_prompt + mean_output) / self.flops
            chunks = math.ceil(mean_prompt / max_batch_tokens)
            return (
                busy <= headroom
                and lam * mean_prompt * t <= max_batch_tokens
                and (tpot_slo is None or t <= headroom * tpot_slo)
                and (ttft_slo is None or chunks * t <= headroom * ttft_slo)
                and lam * mean_output * t * (mean_prompt + mean_output) <= self.kv_capacity_tokens
            )

        lo, hi = 0.0, 1.0
        while feasible(hi) and hi < 1e7:
            lo, hi = hi, hi * 2
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if feasible(mid) else (lo, mid)
        return lo * (mean_prompt + mean_output)


def calibrated(
    model: ModelShape,
    tier: str,
    decode_step_seconds: float,
    prefill_tokens_per_second: float,
    memory_bytes: float = 16e9,
    name: str = "cpu",
    step_overhead: float = 0.0,
) -> LatencyModel:
    """A latency model for a device known only by measurement (a CPU): batch-1 decode step time and prefill rate.

    The effective bandwidth is set so that reading the weights takes the measured decode step, and the effective
    FLOP/s so that prefill runs at the measured rate; MBU and MFU are then 1 by construction.
    """
    if decode_step_seconds <= step_overhead or prefill_tokens_per_second <= 0:
        raise ValueError("calibration needs a decode step longer than the overhead and a positive prefill rate")
    weight_bytes = model.parameters * TIER_BYTES[tier]
    bandwidth = weight_bytes / (decode_step_seconds - step_overhead)
    flops = 2 * model.parameters * prefill_tokens_per_second
    dev = Device(name, memory_bytes, bandwidth, flops, flops, flops)
    return LatencyModel(dev, model, tier, mfu=1.0, mbu=1.0, step_overhead=step_overhead)
