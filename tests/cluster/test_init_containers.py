"""Init containers and volumes on the local fleet, as a kubelet runs them: init containers in order before the
main containers, an emptyDir shared between them, a failing init container retried with its last log lines as
the termination message (FallbackToLogsOnError), envFrom a Secret, and Secret and ConfigMap volumes as files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kubernetes import client

from infleet.cluster.launcher import rewrite, termination_message
from infleet.cluster.testing import FleetHandle, wait_for

pytestmark = pytest.mark.cluster

WRITE = "import pathlib, os, sys; pathlib.Path(sys.argv[1], 'greeting').write_text(os.environ['GREETING'])"
READ = "import pathlib, sys, time; print('read', pathlib.Path(sys.argv[1], 'greeting').read_text(), flush=True)"
FAIL = (
    "import sys; print('working...'); print('NotFound: no object at s3://bucket/model', file=sys.stderr); sys.exit(10)"
)


def pod(name: str, init: list[dict], main: dict, restart: str = "Never") -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": restart,
            "initContainers": init,
            "containers": [main],
            "volumes": [{"name": "cache", "emptyDir": {}}],
        },
    }


def python(name: str, code: str, *args: str, **extra: object) -> dict:
    mounts = [{"name": "cache", "mountPath": "/cache"}]
    return {"name": name, "image": "infleet/python", "command": ["python", "-c", code, *args], "volumeMounts": mounts,
            **extra}  # fmt: skip


def finished(fleet: FleetHandle, namespace: str, name: str) -> client.V1Pod:
    def done() -> client.V1Pod | None:
        p = fleet.core.read_namespaced_pod(name, namespace)
        return p if p.status.phase in ("Succeeded", "Failed") else None

    return wait_for(done, what=f"pod {name} to finish")


def test_init_containers_run_first_and_share_an_empty_dir_with_the_main_container(
    fleet: FleetHandle, namespace: str
) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "greeting"}, "stringData": {"GREETING": "hi"}}
    init = python("write", WRITE, "/cache", envFrom=[{"secretRef": {"name": "greeting"}}])
    body = pod("init-ok", [init], python("main", READ, "/cache"))
    fleet.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all([secret, body]))
    p = finished(fleet, namespace, "init-ok")
    assert p.status.phase == "Succeeded", p.status
    assert p.status.init_container_statuses[0].state.terminated.exit_code == 0
    assert any(c.type == "Initialized" and c.status == "True" for c in p.status.conditions)
    meta = p.metadata
    log = fleet.fleet.dir / "pods" / f"{meta.namespace}_{meta.name}_{meta.uid}" / "main.log"
    assert "read hi" in log.read_text()


def test_secret_and_config_map_volumes_are_files_at_their_mount_paths(fleet: FleetHandle, namespace: str) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "teams"}, "stringData": {"a": "1", "b": "2"}}
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"x.yaml": "k: v"}}
    show = (
        "import pathlib, sys; print(sorted((str(p.relative_to(r)), p.read_text()) for r in map(pathlib.Path, "
        "sys.argv[1:]) for p in r.rglob('*') if p.is_file()))"
    )
    main = {
        "name": "main",
        "image": "infleet/python",
        "command": ["python", "-c", show, "/etc/infleet/s", "/etc/infleet/c"],
        "volumeMounts": [{"name": "s", "mountPath": "/etc/infleet/s"}, {"name": "c", "mountPath": "/etc/infleet/c"}],
    }
    body = pod("projected", [], main)
    body["spec"]["volumes"] = [
        {"name": "s", "secret": {"secretName": "teams", "items": [{"key": "b", "path": "sub/b.txt"}]}},
        {"name": "c", "configMap": {"name": "cfg"}},
    ]
    fleet.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all([secret, config, body]))
    p = finished(fleet, namespace, "projected")
    assert p.status.phase == "Succeeded", p.status
    meta = p.metadata
    log = (fleet.fleet.dir / "pods" / f"{meta.namespace}_{meta.name}_{meta.uid}" / "main.log").read_text()
    # only the listed item of the Secret, at its path; every key of the ConfigMap
    assert str([("sub/b.txt", "2"), ("x.yaml", "k: v")]) in log, log


def test_env_from_a_config_map_with_a_prefix_and_a_missing_optional_one(fleet: FleetHandle, namespace: str) -> None:
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "env"}, "data": {"MODE": "fast"}}
    show = "import os; print('env', os.environ.get('APP_MODE'), os.environ.get('MODE'))"
    main = {
        "name": "main",
        "image": "infleet/python",
        "command": ["python", "-c", show],
        "envFrom": [
            {"configMapRef": {"name": "env"}, "prefix": "APP_"},
            {"configMapRef": {"name": "absent", "optional": True}},  # a kubelet starts the pod without it
        ],
    }
    fleet.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all([config, pod("env-from", [], main)]))
    p = finished(fleet, namespace, "env-from")
    assert p.status.phase == "Succeeded", p.status
    meta = p.metadata
    log = (fleet.fleet.dir / "pods" / f"{meta.namespace}_{meta.name}_{meta.uid}" / "main.log").read_text()
    assert "env fast None" in log, log


def test_a_failing_init_container_keeps_the_pod_initializing_with_its_reason(
    fleet: FleetHandle, namespace: str
) -> None:
    init = python("fetch", FAIL, terminationMessagePolicy="FallbackToLogsOnError")
    body = pod("init-fails", [init], python("main", READ, "/cache"), restart="Always")
    fleet.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body))

    def retried() -> client.V1Pod | None:
        p = fleet.core.read_namespaced_pod("init-fails", namespace)
        st = (p.status.init_container_statuses or [None])[0]
        return p if st is not None and st.restart_count >= 2 and st.last_state.terminated else None

    p = wait_for(retried, what="the init container to be retried")
    st = p.status.init_container_statuses[0]
    assert st.last_state.terminated.exit_code == 10
    assert st.last_state.terminated.message.splitlines()[-1] == "NotFound: no object at s3://bucket/model"
    assert p.status.phase == "Pending" and p.status.container_statuses[0].state.waiting.reason == "PodInitializing"
    assert any(c.type == "Initialized" and c.status == "False" for c in p.status.conditions)
    assert "Init:" in fleet.kubectl("get", "pod", "init-fails", "-n", namespace).stdout  # kubectl shows Init:...


def test_paths_under_a_mount_follow_it() -> None:
    mounts = {"/model-cache": "/var/x/cache", "/model-cache/hf": "/var/y"}
    assert rewrite("/model-cache/abc", mounts) == "/var/x/cache/abc"
    assert rewrite("--cache=/model-cache", mounts) == "--cache=/var/x/cache"
    assert rewrite("/model-cache/hf/z", mounts) == "/var/y/z"  # the deepest mount wins
    assert rewrite("/model-cachex", mounts) == "/model-cachex" and rewrite("hf://a/b", mounts) == "hf://a/b"


def test_the_termination_message_is_the_tail_of_the_log(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    log.write_text("".join(f"line {i}\n" for i in range(200)) + "Unauthorized: bad key\n")
    message = termination_message(log)
    assert message.endswith("Unauthorized: bad key") and "line 121" in message and "line 120" not in message
    assert len(message.splitlines()) == 80 and len(message.encode()) <= 2048
    cri = tmp_path / "cri.log"  # the launcher's own format: the message is the text, without time and stream
    cri.write_text("2026-12-05T10:00:00.000001Z stdout F working\n2026-12-05T10:00:01.000001Z stderr F NotFound: x\n")
    assert termination_message(cri) == "working\nNotFound: x"
