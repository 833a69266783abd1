"""Intra-op threads matched to the CPUs this pod may use, not to the machine's cores nor to one.

PyTorch starts one OpenMP thread per core it sees, but a container limited by a CFS quota gets throttled when
more threads than its quota spin at once, and one thread leaves the quota idle. The count comes from, in order:
`--threads`, `OMP_NUM_THREADS` (the user's own choice), the cgroup CPU quota (v2 `cpu.max`, v1
`cpu.cfs_quota_us`/`cpu.cfs_period_us`), rounded down as a quota of 1.5 CPUs cannot keep two threads busy, capped
by the CPUs the process may run on (`os.sched_getaffinity`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_CPU_DIRS = ("cpu", "cpu,cpuacct")  # where hybrid and v1 hosts mount the CPU controller


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    source: str  # why this many: "--threads", "OMP_NUM_THREADS", "cgroup cpu.max 2.0 CPUs", "CPU affinity"


def _read_ints(path: Path) -> list[int] | None:
    try:
        return [int(word) for word in path.read_text().split()]
    except (OSError, ValueError):  # absent, unreadable, or "max" (no limit)
        return None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> tuple[float, str] | None:
    """CPUs per period the quota allows and the file it came from; None when there is no quota."""
    v2 = _read_ints(root / "cpu.max")
    if v2 is not None and len(v2) == 2 and v2[0] > 0 and v2[1] > 0:
        return v2[0] / v2[1], "cpu.max"
    for d in V1_CPU_DIRS:
        quota, period = _read_ints(root / d / "cpu.cfs_quota_us"), _read_ints(root / d / "cpu.cfs_period_us")
        if quota and period and quota[0] > 0 and period[0] > 0:  # quota -1: no limit
            return quota[0] / period[0], "cpu.cfs_quota_us"
    return None


def default_threads(root: Path = CGROUP_ROOT) -> ThreadChoice:
    """Threads for this process when the user chose none: the cgroup quota, capped by the CPU affinity."""
    available = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit(root)
    if limit is None:
        return ThreadChoice(available, "CPU affinity")
    cpus, name = limit
    return ThreadChoice(max(1, min(available, math.floor(cpus))), f"cgroup {name} {cpus:g} CPUs")


def choose_threads(
    requested: int | None, env: Mapping[str, str] = os.environ, root: Path = CGROUP_ROOT
) -> ThreadChoice:
    """The flag, else `OMP_NUM_THREADS`, else the pod's CPU limit; ValueError names a bad value."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads must be at least 1, got {requested}")
        return ThreadChoice(requested, "--threads")
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp:
        first = omp.split(",")[0].strip()  # OpenMP allows a list per nesting level; the first is ours
        if not first.isdigit() or int(first) < 1:
            raise ValueError(f"OMP_NUM_THREADS must be a positive integer, got {omp!r}")
        return ThreadChoice(int(first), "OMP_NUM_THREADS")
    return default_threads(root)


def apply_threads(requested: int | None, env: Mapping[str, str] = os.environ, root: Path = CGROUP_ROOT) -> ThreadChoice:
    """Set PyTorch's intra-op threads at engine start; the server's startup line says how many and why."""
    choice = choose_threads(requested, env, root)
    torch.set_num_threads(choice.threads)
    return choice
