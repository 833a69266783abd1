"""Shared fixtures: a real Prometheus process (Debian's package, installed by `make fleet-bins`)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_prometheus(config: dict, workdir: Path, timeout: float = 60.0) -> tuple[subprocess.Popen[bytes], str]:
    """Run `prometheus` with `config` on a free loopback port; returns the process and its base URL once ready."""
    binary = shutil.which("prometheus")
    if binary is None:  # not a skip: CI installs it through `make fleet-bins` (python -m infleet.cluster.build)
        raise RuntimeError("prometheus is not installed; run `make fleet-bins` (it installs Debian's package)")
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (workdir / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {proc.returncode}: {(workdir / 'prometheus.log').read_text()}")
        try:
            if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError(f"prometheus did not become ready within {timeout}s")


def stop_prometheus(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def prometheus_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[dict], str]]:
    """Call with a Prometheus config dict; get the URL of a fresh Prometheus, stopped at the end of the session."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(config: dict) -> str:
        proc, url = start_prometheus(config, tmp_path_factory.mktemp("prometheus"))
        procs.append(proc)
        return url

    yield start
    for proc in procs:
        stop_prometheus(proc)
