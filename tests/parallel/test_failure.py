"""A replica is all or nothing: when one rank dies, the leader's /health turns 503 and every other rank exits
non-zero, so Kubernetes restarts the whole group instead of leaving it hung."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest

from infleet.runtime.server.launch import ServerProcess

EXIT_WAIT = 180.0  # generous on a loaded machine; the test asserts that ranks exit, not how fast


def worker_ranks(pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(pid).children() if "infleet.runtime.parallel.worker" in " ".join(p.cmdline())]


@pytest.fixture
def fast_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFLEET_HEARTBEAT_TIMEOUT", "5")


@pytest.mark.slow
def test_killing_a_rank_makes_the_leader_unhealthy_then_exit(tiny_model_dir: Path, fast_heartbeat: None) -> None:
    args = ("--pipeline-parallel", "2", "--served-name", "tiny", "--max-model-len", "256")
    server = ServerProcess(tiny_model_dir, *args)
    with server:
        answer = httpx.post(
            f"{server.url}/v1/completions",
            json={"model": "tiny", "prompt": "Once upon a time", "max_tokens": 4, "temperature": 0},
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["completion_tokens"] == 4
        assert server.process is not None
        (worker,) = worker_ranks(server.process.pid)
        worker.send_signal(signal.SIGKILL)
        statuses: list[int] = []
        deadline = time.monotonic() + EXIT_WAIT
        while server.process.poll() is None and time.monotonic() < deadline:
            try:
                statuses.append(httpx.get(f"{server.url}/health", timeout=2).status_code)
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        code = server.wait(timeout=5)
        assert code != 0, server.output()[-3000:]
        assert 503 in statuses, statuses[-20:]  # unhealthy before it went away
        assert "sent no heartbeat" in server.output()


@pytest.mark.slow
def test_killing_the_leader_makes_the_other_ranks_exit(tiny_model_dir: Path, fast_heartbeat: None) -> None:
    args = ("--tensor-parallel", "2", "--pipeline-parallel", "2", "--max-model-len", "256")
    server = ServerProcess(tiny_model_dir, *args)
    with server:
        assert server.process is not None
        workers = worker_ranks(server.process.pid)
        assert len(workers) == 3
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        _, alive = psutil.wait_procs(workers, timeout=EXIT_WAIT)
        for p in alive:
            p.kill()
        assert not alive, "ranks outlived their leader"
        # their exit status went to the dead leader (their parent); each says in the shared log why it failed
        log = server.output()
        for rank in (1, 2, 3):
            assert f"rank {rank}: " in log or f"rank {rank} failed" in log, log[-3000:]
