"""`kubectl logs` on launched pods, served by the API server through KWOK's kubelet endpoint from the launcher's
log files: the current output, `--tail`, `-c` for an init container, `--previous` after a restart, and `-f`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from infleet.cluster.testing import FleetHandle, wait_for

pytestmark = pytest.mark.cluster

# prints five numbered lines, then (first run only) exits 1 so the container restarts once, then waits
COUNT = """
import os, sys, time, pathlib
marker = pathlib.Path(os.environ["HOME"], "ran-once-" + os.environ["HOSTNAME"])
run = 2 if marker.exists() else 1
for i in range(5):
    print(f"run {run} line {i}", flush=True)
if run == 1:
    marker.write_text("x")
    sys.exit(1)
while True:
    time.sleep(1)
    print(f"run {run} tick", flush=True)
"""


def test_kubectl_logs_reads_launched_pods(
    fleet: FleetHandle, namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    home = tmp_path_factory.mktemp("home")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "counter"},
        "spec": {
            "initContainers": [
                {"name": "hello", "image": "infleet/python", "command": ["python", "-c", "print('init says hi')"]}
            ],
            "containers": [
                {
                    "name": "main",
                    "image": "infleet/python",
                    "command": ["python", "-c", COUNT],
                    "env": [{"name": "HOME", "value": str(home)}],
                }
            ],
        },
    }
    fleet.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(pod))

    def restarted_and_ticking() -> bool:
        out = fleet.kubectl("logs", "counter", "-n", namespace, check=False).stdout
        return "run 2 tick" in out

    wait_for(restarted_and_ticking, timeout=120, what="the container's second run to log through kubectl")
    current = fleet.kubectl("logs", "counter", "-n", namespace).stdout
    assert current.startswith("run 2 line 0\n") and "run 1" not in current, current
    previous = fleet.kubectl("logs", "counter", "-n", namespace, "--previous").stdout
    assert previous.splitlines() == [f"run 1 line {i}" for i in range(5)], previous
    tail = fleet.kubectl("logs", "counter", "-n", namespace, "--tail=1").stdout
    assert tail.count("\n") == 1 and tail.startswith("run 2"), tail
    assert fleet.kubectl("logs", "counter", "-n", namespace, "-c", "hello").stdout == "init says hi\n"
    # -f keeps streaming: lines written after the command started arrive (it is stopped after 6 s)
    kubectl = [str(fleet.fleet.bins.kubectl), f"--kubeconfig={fleet.kubeconfig}"]
    cmd = ["timeout", "6", *kubectl, "logs", "-f", "--tail=0", "counter", "-n", namespace]
    streamed = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    assert streamed.count("run 2 tick") >= 2, streamed


def test_kubectl_exec_runs_in_the_pods_directory_with_its_variables(fleet: FleetHandle, namespace: str) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"TOKEN": "hidden"}}
    main = {
        "name": "main",
        "image": "infleet/python",
        "command": ["python", "-c", "import time; time.sleep(3600)"],
        "env": [
            {"name": "GREETING", "value": "hello"},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "TOKEN"}}},
        ],
    }
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sleeper"}, "spec": {"containers": [main]}}
    fleet.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all([secret, pod]))
    show = "import os; print(os.environ['GREETING'], os.environ['HOSTNAME'], os.environ.get('TOKEN'), os.getcwd())"

    def answered() -> str | None:
        done = fleet.kubectl("exec", "sleeper", "-n", namespace, "--", "python3", "-c", show, check=False)
        return done.stdout if done.returncode == 0 else None

    out = wait_for(answered, timeout=60, what="kubectl exec to answer")
    greeting, hostname, token, cwd = out.split()
    assert (greeting, hostname, token) == ("hello", "sleeper", "None")  # a Secret's value never enters the Exec
    assert Path(cwd).name.startswith(f"{namespace}_sleeper_")  # the pod's own directory
