"""Pods as podman containers of the project's own images: `infleet cluster up --pods containers`.

The launcher (launcher.py) computes a pod's command, environment, volumes and IP the same way in both modes; this
module turns that into a `podman run` instead of a host process. The container joins the pod network namespace
(where the host process would have run through nsenter), sees each volume at its own mountPath (no path rewriting),
and gets the container's securityContext as podman options (read-only root, non-root user, no capabilities, no
privilege escalation). `infleet/<name>:<tag>` resolves to the image `make images` built, `localhost/infleet/...`;
`infleet/runtime:<version>` falls back to the CPU variant (`<version>-cpu`) when the CUDA image is not built, since
the local fleet has no GPU.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from kubernetes import client

from infleet.cluster import images

MODE_ENV = "INFLEET_PODS"
MODES = ("processes", "containers")
SHIM_MOUNT = "/opt/infleet-podshim"  # the pod shim (podshim/sitecustomize.py), read-only, on PYTHONPATH
HOST_ONLY_ENV = ("PATH", "HOME", "PYTHONPATH")  # the image's own values win over the host's


MODE_ANNOTATION = "infleet.dev/local-pods"  # a pod's own choice, over the fleet's (side-by-side measurements)


def mode(pod: client.V1Pod | None = None) -> str:
    """How the node agent runs a pod: its `infleet.dev/local-pods` annotation, else INFLEET_PODS (set by
    `infleet cluster up --pods`), else host processes."""
    annotations = (pod.metadata.annotations or {}) if pod is not None else {}
    value = annotations.get(MODE_ANNOTATION) or os.environ.get(MODE_ENV, "processes")
    if value not in MODES:
        raise ValueError(f"pods as {value!r}: expected one of {', '.join(MODES)}")
    return value


def local_image(image: str) -> str:
    """`infleet/runtime:0.1.0` -> the locally built `localhost/infleet/runtime:0.1.0` (or its `-cpu` variant)."""
    local = image if image.startswith("localhost/") else f"localhost/{image}"
    if not images.exists(local) and images.exists(f"{local}-cpu"):
        return f"{local}-cpu"
    return local


def container_name(pod: client.V1Pod, container: client.V1Container) -> str:
    return f"infleet-{pod.metadata.uid[:13]}-{container.name}"[:63]


def security_options(container: client.V1Container, pod: client.V1Pod) -> list[str]:
    """The securityContext fields a restricted pod sets, as podman options."""
    pod_ctx = pod.spec.security_context or client.V1PodSecurityContext()
    ctx = container.security_context or client.V1SecurityContext()
    out: list[str] = []
    user = ctx.run_as_user if ctx.run_as_user is not None else pod_ctx.run_as_user
    group = ctx.run_as_group if ctx.run_as_group is not None else pod_ctx.run_as_group
    if user is not None:
        out.append(f"--user={user}" + (f":{group}" if group is not None else ""))
    if ctx.read_only_root_filesystem:
        out.append("--read-only")
    if ctx.capabilities is not None and "ALL" in (ctx.capabilities.drop or []):
        out.append("--cap-drop=all")
    if ctx.allow_privilege_escalation is False:
        out.append("--security-opt=no-new-privileges")
    return out


def run_argv(
    pod: client.V1Pod,
    container: client.V1Container,
    env: dict[str, str],
    volumes: dict[str, Path],
    host_paths: list[Path],
    netns: str | None,
    pods_dir: Path,
) -> list[str]:
    """`podman run` for one container: its command (else the image's entrypoint) and args. `volumes` maps
    volume names to the local directories standing in for them; `host_paths` are files the environment names by
    their host path (the pod's ServiceAccount kubeconfig and the CA), mounted read-only where they are; `netns` is
    the pod network namespace (None: the host's network)."""
    options = [
        "--rm",
        f"--name={container_name(pod, container)}",
        f"--label=infleet.pods-dir={pods_dir}",
        f"--network=ns:{netns}" if netns else "--network=host",
        "--pull=never",
        f"--volume={Path(__file__).with_name('podshim')}:{SHIM_MOUNT}:ro",
        f"--env=PYTHONPATH={SHIM_MOUNT}",
        *security_options(container, pod),
    ]
    in_memory = {v.name for v in pod.spec.volumes or [] if v.empty_dir is not None and v.empty_dir.medium == "Memory"}
    for mount in container.volume_mounts or []:
        if mount.name in volumes:
            options.append(f"--volume={volumes[mount.name]}:{mount.mount_path}" + (":ro" if mount.read_only else ""))
        elif mount.name in in_memory:
            options.append(f"--tmpfs={mount.mount_path}:rw,mode=1777")
    options += [f"--volume={p}:{p}:ro" for p in host_paths]
    options += [f"--env={k}={v}" for k, v in env.items() if k not in HOST_ONLY_ENV]
    if container.working_dir:
        options.append(f"--workdir={container.working_dir}")
    if container.command:
        options.append(f"--entrypoint={json.dumps(list(container.command))}")
    return ["podman", "run", *options, local_image(container.image), *(container.args or [])]


def exec_argv(pod: client.V1Pod, container: client.V1Container, command: list[str]) -> list[str]:
    return ["podman", "exec", container_name(pod, container), *command]


def remove(name: str) -> None:
    """Force-remove a container (after its `podman run` was killed, the container itself may live on)."""
    images.podman("rm", "--force", "--time=0", name, check=False, capture_output=True)


def remove_leftovers(pods_dir: Path) -> None:
    """Containers a previous agent of this fleet started and did not stop."""
    if shutil.which("podman") is None:
        return
    listed = images.podman(
        "ps", "--all", "--quiet", f"--filter=label=infleet.pods-dir={pods_dir}", check=False, capture_output=True
    )
    for cid in str(listed.stdout).split():
        remove(cid)


def environment() -> dict[str, str]:
    """podman's settings on this machine (containers.conf), for the `podman run` processes the launcher starts."""
    return images.environment()
