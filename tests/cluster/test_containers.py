"""`--pods containers`: the `podman run` the launcher builds from a pod (podman itself runs in tests/images)."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client

from infleet.cluster import containers, images


def runtime_pod(annotations: dict[str, str] | None = None) -> client.V1Pod:
    """A restricted pod like the operator's: non-root, read-only root, no capabilities, volumes at mountPaths."""
    security = client.V1SecurityContext(
        run_as_user=10001,
        run_as_group=10001,
        read_only_root_filesystem=True,
        allow_privilege_escalation=False,
        capabilities=client.V1Capabilities(drop=["ALL"]),
    )
    container = client.V1Container(
        name="runtime",
        image="infleet/runtime:0.1.0",
        command=["python", "-m", "infleet.runtime"],
        args=["serve", "--model", "/var/cache/infleet/models/m"],
        security_context=security,
        volume_mounts=[
            client.V1VolumeMount(name="model-cache", mount_path="/var/cache/infleet/models", read_only=True),
            client.V1VolumeMount(name="tmp", mount_path="/tmp"),
            client.V1VolumeMount(name="shm", mount_path="/dev/shm"),
        ],
    )
    volumes = [
        client.V1Volume(name="model-cache", empty_dir=client.V1EmptyDirVolumeSource()),
        client.V1Volume(name="tmp", empty_dir=client.V1EmptyDirVolumeSource()),
        client.V1Volume(name="shm", empty_dir=client.V1EmptyDirVolumeSource(medium="Memory")),
    ]
    meta = client.V1ObjectMeta(name="r-0", namespace="demo", uid="0123456789abcdef-uid", annotations=annotations)
    return client.V1Pod(metadata=meta, spec=client.V1PodSpec(containers=[container], volumes=volumes))


def test_run_argv_carries_the_pod_network_volumes_environment_and_security(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(images, "exists", lambda image: image == "localhost/infleet/runtime:0.1.0-cpu")
    pod = runtime_pod()
    volumes = {"model-cache": tmp_path / "cache", "tmp": tmp_path / "tmp"}
    env = {"PATH": "/host/bin", "POD_IP": "10.1.0.5", "KUBECONFIG": "/sa/kubeconfig"}
    argv = containers.run_argv(
        pod, pod.spec.containers[0], env, volumes, [Path("/sa")], "/run/netns/infleet1", tmp_path / "pods"
    )
    assert argv[:2] == ["podman", "run"]
    image_at = argv.index("localhost/infleet/runtime:0.1.0-cpu")  # no CUDA image here: its CPU variant
    options, args = argv[2:image_at], argv[image_at + 1 :]
    assert args == ["serve", "--model", "/var/cache/infleet/models/m"]
    assert '--entrypoint=["python", "-m", "infleet.runtime"]' in options
    assert "--network=ns:/run/netns/infleet1" in options
    assert {"--user=10001:10001", "--read-only", "--cap-drop=all", "--security-opt=no-new-privileges"} <= set(options)
    assert f"--volume={tmp_path / 'cache'}:/var/cache/infleet/models:ro" in options
    assert f"--volume={tmp_path / 'tmp'}:/tmp" in options
    assert "--tmpfs=/dev/shm:rw,mode=1777" in options
    assert "--volume=/sa:/sa:ro" in options
    assert "--env=POD_IP=10.1.0.5" in options and "--env=KUBECONFIG=/sa/kubeconfig" in options
    assert not any(o.startswith("--env=PATH=") for o in options)  # the image's PATH, not the host's
    assert f"--label=infleet.pods-dir={tmp_path / 'pods'}" in options


def test_without_a_pod_network_the_container_uses_the_host_network(tmp_path: Path) -> None:
    pod = runtime_pod()
    argv = containers.run_argv(pod, pod.spec.containers[0], {}, {}, [], None, tmp_path)
    assert "--network=host" in argv


def test_the_mode_comes_from_the_pod_then_the_fleet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(containers.MODE_ENV, raising=False)
    assert containers.mode(runtime_pod()) == "processes"
    monkeypatch.setenv(containers.MODE_ENV, "containers")
    assert containers.mode(runtime_pod()) == "containers"
    assert containers.mode(runtime_pod({containers.MODE_ANNOTATION: "processes"})) == "processes"
    with pytest.raises(ValueError, match="expected one of processes, containers"):
        containers.mode(runtime_pod({containers.MODE_ANNOTATION: "vms"}))
