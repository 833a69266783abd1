"""A second, throwaway fleet beside the session's: 1,000 nodes come up Ready, and `down` leaves nothing behind."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config

from infleet.cluster import build
from infleet.cluster.controlplane import Ports
from infleet.cluster.testing import FleetHandle, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

PORT_BASE = 17000


@pytest.fixture(scope="module")
def second_fleet(tmp_path_factory: pytest.TempPathFactory, fleet: FleetHandle) -> Iterator[tuple[Path, dict[str, str]]]:
    directory = tmp_path_factory.mktemp("fleet2")
    env = {
        **os.environ,
        "INFLEET_FLEET_DIR": str(directory),
        "INFLEET_FLEET_PORT_BASE": str(PORT_BASE),
        "INFLEET_SERVICE_CIDR": "127.97.0.0/16",
        "INFLEET_POD_CIDR": "10.245.0.0/16",
    }
    up = subprocess.run(
        [sys.executable, "-m", "infleet.cluster", "up", "--nodes", "1000"], env=env, capture_output=True, text=True
    )
    assert up.returncode == 0, up.stdout + up.stderr
    yield directory, env
    subprocess.run([sys.executable, "-m", "infleet.cluster", "down"], env=env, capture_output=True)


def test_a_thousand_nodes_come_up_ready(second_fleet: tuple[Path, dict[str, str]]) -> None:
    directory, _ = second_fleet
    core = client.CoreV1Api(config.new_client_from_config(str(directory / "kubeconfig")))

    def all_ready() -> bool:
        nodes = core.list_node(label_selector="type=kwok").items
        ready = [n for n in nodes if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])]
        return len(nodes) == 1000 and len(ready) == 1000

    wait_for(all_ready, timeout=300, interval=2, what="1,000 Ready nodes")


def fleet_processes(directory: Path) -> list[int]:
    """Processes whose command line names the fleet directory or whose working directory lies inside it."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if str(directory) in cmdline or cwd.startswith(str(directory)):
            found.append(int(proc.name))
    return found


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_down_leaves_no_process_and_no_listener(second_fleet: tuple[Path, dict[str, str]]) -> None:
    directory, env = second_fleet
    kubectl = [str(build.binaries().kubectl), f"--kubeconfig={directory / 'kubeconfig'}"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "containers": [{"name": "web", "image": "infleet/python", "command": ["python", "-m", "http.server"]}]
        },
    }
    subprocess.run([*kubectl, "apply", "-f", "-"], input=yaml.safe_dump(pod), text=True, check=True, env=env)
    core = client.CoreV1Api(config.new_client_from_config(str(directory / "kubeconfig")))
    wait_for(lambda: core.read_namespaced_pod("web", "default").status.pod_ip, what="the launched pod to get an IP")
    assert len(fleet_processes(directory)) >= 7, "etcd, 3 control-plane parts, kwok, agent and the pod's process"

    down = subprocess.run([sys.executable, "-m", "infleet.cluster", "down"], env=env, capture_output=True, text=True)
    assert down.returncode == 0, down.stderr
    assert fleet_processes(directory) == []
    assert [p for p in Ports(PORT_BASE).all() if listening(p)] == []
