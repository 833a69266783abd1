"""How many KV-cache blocks fit: from the GPU's free memory after the weights, or a share of a CPU's memory limit.

On a GPU the budget is what `--gpu-memory-utilization` of the card leaves once the weights are resident (as vLLM
sizes it, without its activation profiling run: activations come out of the remaining share). On a CPU it is
`--kv-cache-memory` bytes, by default a share of the pod's cgroup memory limit (the machine's memory without one).
"""

from __future__ import annotations

import torch

from infleet.runtime.config import DEFAULT_CPU_KV_SHARE, EngineConfig, memory_limit_bytes


class KVCacheTooSmall(ValueError):
    """The budget does not hold a single block; the message says what to change."""


def kv_cache_budget(cfg: EngineConfig, device: torch.device) -> tuple[int, str]:
    """(bytes for the KV cache, how that was decided: for the startup log)."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        reserve = int(total * (1.0 - cfg.gpu_memory_utilization))
        budget = free - reserve
        how = (
            f"GPU {device}: {free / 2**30:.2f} GiB free of {total / 2**30:.2f} GiB after the weights, "
            f"--gpu-memory-utilization {cfg.gpu_memory_utilization} leaves {max(budget, 0) / 2**30:.2f} GiB"
        )
        if budget <= 0:
            raise KVCacheTooSmall(f"no GPU memory left for the KV cache ({how}); raise --gpu-memory-utilization")
        return budget, how
    if cfg.kv_cache_memory is not None:
        return cfg.kv_cache_memory, f"--kv-cache-memory {cfg.kv_cache_memory} bytes"
    limit = memory_limit_bytes()
    budget = int(limit * DEFAULT_CPU_KV_SHARE)
    return budget, f"{DEFAULT_CPU_KV_SHARE:.0%} of the memory limit {limit / 2**30:.2f} GiB (set --kv-cache-memory)"


def num_kv_blocks(budget: int, bytes_per_block: int, max_num_seqs: int, max_model_len: int, block_size: int) -> int:
    """Blocks within the budget, no more than `max_num_seqs` full-length sequences need."""
    fit = budget // bytes_per_block
    if fit < 1:
        raise KVCacheTooSmall(f"a KV-cache budget of {budget} bytes does not hold one block of {bytes_per_block} bytes")
    wanted = -(-max_num_seqs * max_model_len // block_size)
    return max(1, min(wanted, fit))
