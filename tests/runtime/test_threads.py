"""Intra-op threads from the pod's CPU limit: fake cgroup trees (v2 and v1), the flag and OMP_NUM_THREADS."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from infleet.runtime.config import EngineConfig
from infleet.runtime.engine.engine import execution_info
from infleet.runtime.threads import ThreadChoice, apply_threads, cgroup_cpu_limit, choose_threads, default_threads

AFFINITY = len(os.sched_getaffinity(0))


def cgroup(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text + "\n")
    return root


@pytest.fixture
def restore_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_v2_quota(tmp_path: Path) -> None:
    root = cgroup(tmp_path, {"cpu.max": "150000 100000"})
    assert cgroup_cpu_limit(root) == (1.5, "cpu.max")
    assert default_threads(root) == ThreadChoice(1, "cgroup cpu.max 1.5 CPUs")  # 1.5 CPUs keep one thread busy


def test_v2_unlimited_falls_back_to_affinity(tmp_path: Path) -> None:
    root = cgroup(tmp_path, {"cpu.max": "max 100000"})
    assert cgroup_cpu_limit(root) is None
    assert default_threads(root) == ThreadChoice(AFFINITY, "CPU affinity")


def test_v1_quota(tmp_path: Path) -> None:
    root = cgroup(tmp_path, {"cpu,cpuacct/cpu.cfs_quota_us": "100000", "cpu,cpuacct/cpu.cfs_period_us": "100000"})
    assert cgroup_cpu_limit(root) == (1.0, "cpu.cfs_quota_us")
    assert default_threads(root).threads == 1


def test_v1_unlimited_and_no_cgroup(tmp_path: Path) -> None:
    root = cgroup(tmp_path, {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"})
    assert cgroup_cpu_limit(root) is None
    assert cgroup_cpu_limit(tmp_path / "absent") is None
    assert default_threads(tmp_path / "absent") == ThreadChoice(AFFINITY, "CPU affinity")


def test_quota_above_affinity_is_capped(tmp_path: Path) -> None:
    root = cgroup(tmp_path, {"cpu.max": f"{(AFFINITY + 8) * 100000} 100000"})
    assert default_threads(root).threads == AFFINITY


def test_small_quota_still_one_thread(tmp_path: Path) -> None:
    assert default_threads(cgroup(tmp_path, {"cpu.max": "20000 100000"})).threads == 1


def test_flag_then_env_then_cgroup(tmp_path: Path) -> None:
    root = cgroup(tmp_path, {"cpu.max": "100000 100000"})
    assert choose_threads(3, {"OMP_NUM_THREADS": "5"}, root) == ThreadChoice(3, "--threads")
    assert choose_threads(None, {"OMP_NUM_THREADS": "5"}, root) == ThreadChoice(5, "OMP_NUM_THREADS")
    assert choose_threads(None, {"OMP_NUM_THREADS": "4,2"}, root) == ThreadChoice(4, "OMP_NUM_THREADS")
    assert choose_threads(None, {}, root) == ThreadChoice(1, "cgroup cpu.max 1 CPUs")


@pytest.mark.parametrize("value", ["abc", "0", "-2", ",3"])
def test_bad_omp_num_threads_is_named(tmp_path: Path, value: str) -> None:
    with pytest.raises(ValueError, match="OMP_NUM_THREADS must be a positive integer"):
        choose_threads(None, {"OMP_NUM_THREADS": value}, tmp_path)


def test_bad_flag_is_named() -> None:
    with pytest.raises(ValueError, match="--threads must be at least 1"):
        EngineConfig(threads=0)
    with pytest.raises(ValueError, match="INFLEET_RANK_THREADS"):
        EngineConfig(threads=2, tensor_parallel=2)


def test_applied_logged_and_reported(tmp_path: Path, restore_threads: None, caplog: pytest.LogCaptureFixture) -> None:
    root = cgroup(tmp_path, {"cpu.max": "100000 100000"})
    want = 2 if torch.get_num_threads() != 2 else 3  # differs from the current count, so the call must change it
    assert apply_threads(want, {}, root) == ThreadChoice(want, "--threads")
    assert torch.get_num_threads() == want
    assert execution_info(torch.nn.Linear(2, 2), "bf16")["threads"] == want
    assert apply_threads(None, {}, root).threads == 1 and torch.get_num_threads() == 1
