"""The local launcher: runs pods of infleet's own images as real processes, the way a kubelet runs containers.

KWOK only pretends to run pods. For a pod whose containers use an `infleet/*` image, the launcher runs each
container's command as a local process bound to the pod's own loopback IP (see `podshim/`), hands it a
ServiceAccount token obtained through the TokenRequest API (as a kubeconfig in `KUBECONFIG`, so an
in-cluster client inside acts with exactly that ServiceAccount's rights), runs the readiness, liveness and
startup probes, restarts exited processes per the restartPolicy, and reports all of it in the pod's status.
Deleting the pod stops its processes (SIGTERM, then SIGKILL after the grace period). With INFLEET_PODS=containers
(`infleet cluster up --pods containers`) each container runs as a podman container of the built image instead
(containers.py), with the same environment, volumes, IP, probes and logs.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from infleet.cluster import containers
from infleet.cluster.controlplane import LAUNCHED_IMAGE_PREFIX
from infleet.cluster.network import PodNetwork

SHIM_DIR = Path(__file__).with_name("podshim")
REASSERT_STATUS_SECONDS = 10.0

# What `docker run IMAGE` would run when a container gives no command.
ENTRYPOINTS: dict[str, list[str]] = {
    "infleet/runtime": ["python", "-m", "infleet.runtime"],
    "infleet/operator": ["python", "-m", "infleet.operator"],
    "infleet/gateway": ["python", "-m", "infleet.gateway"],
    "infleet/python": ["python"],
}


def is_launched(pod: client.V1Pod) -> bool:
    return any(c.image.startswith(LAUNCHED_IMAGE_PREFIX) for c in pod.spec.containers)


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def image_name(image: str) -> str:
    """`infleet/runtime:0.1.0` -> `infleet/runtime`."""
    name = image.split("@", 1)[0]
    return name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name


def container_argv(container: client.V1Container) -> list[str]:
    command = list(container.command or ENTRYPOINTS.get(image_name(container.image), []))
    argv = command + list(container.args or [])
    if not argv:
        raise ValueError(f"container {container.name}: no command and image {container.image} has no entrypoint")
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    elif argv[0] == "infleet":
        argv[:1] = [sys.executable, "-m", "infleet"]
    return argv


TERMINATION_MESSAGE_BYTES = 2048  # what a kubelet keeps of a container's message
TERMINATION_LOG_LINES = 80


def local_volumes(pod: client.V1Pod, pod_dir: Path, claims_dir: Path) -> dict[str, Path]:
    """Volume name -> the local directory standing in for it: an emptyDir lives and dies with the pod; a claim is
    one directory per (namespace, claim), shared by every pod that mounts it, as a ReadWriteMany volume would be."""
    out = {}
    for v in pod.spec.volumes or []:
        if v.empty_dir is not None and v.empty_dir.medium != "Memory":
            out[v.name] = pod_dir / "volumes" / v.name
        elif v.persistent_volume_claim is not None:
            out[v.name] = claims_dir / pod.metadata.namespace / v.persistent_volume_claim.claim_name
        elif v.secret is not None or v.config_map is not None:
            out[v.name] = pod_dir / "volumes" / v.name  # written by PodRunner._project_volumes
    return out


def mount_map(container: client.V1Container, volumes: dict[str, Path]) -> dict[str, str]:
    """mountPath -> local directory, for the container's mounts of volumes the launcher stands in for."""
    return {m.mount_path.rstrip("/"): str(volumes[m.name]) for m in container.volume_mounts or [] if m.name in volumes}


VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, defined: dict[str, str]) -> str:
    """Kubernetes' dependent environment variables: `$(NAME)` -> NAME's value when it is defined (else kept as
    written), `$$` -> `$`."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "$"
        return defined.get(name, match.group(0))

    return VAR_REF.sub(one, value)


def rewrite(value: str, mounts: dict[str, str]) -> str:
    """A path under a mountPath, alone or as `--flag=path`, becomes the same path under the volume's directory:
    processes share the host's filesystem, so this is how a mount is seen (the deepest mountPath wins)."""
    prefix, sep, path = value.partition("=") if value.startswith("-") else ("", "", value)
    for mount in sorted(mounts, key=len, reverse=True):
        if path == mount or path.startswith(mount + "/"):
            return prefix + sep + mounts[mount] + path[len(mount) :]
    return value


class CriLog:
    """A container's log in the CRI format a kubelet writes (`<RFC 3339 time> <stream> <F|P> <text>`), which KWOK
    serves to `kubectl logs`: one pump per stream, the file closed with the last. The launcher sends stderr into
    stdout's pipe: two pipes read by two threads would interleave lines out of the order they were written."""

    def __init__(self, path: Path, streams: int = 2) -> None:
        self.file = path.open("ab")
        self.lock = threading.Lock()
        self.open = streams

    def pump(self, pipe: IO[bytes], stream: str) -> None:
        for raw in iter(pipe.readline, b""):
            stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            full = raw.endswith(b"\n")  # F: a full line; P: a partial one (the stream ended mid-line)
            with self.lock:
                self.file.write(f"{stamp} {stream} {'F' if full else 'P'} ".encode() + raw.rstrip(b"\n") + b"\n")
                self.file.flush()
        pipe.close()
        with self.lock:
            self.open -= 1
            if not self.open:
                self.file.close()


def log_text(line: str) -> str:
    """The text of one CRI log line (the line itself when it is not in that format)."""
    parts = line.split(" ", 3)
    if len(parts) >= 3 and parts[1] in ("stdout", "stderr") and parts[2] in ("F", "P"):
        return parts[3] if len(parts) == 4 else ""
    return line


def termination_message(log: Path) -> str:
    """FallbackToLogsOnError: the tail of the container's output, at most 80 lines and 2 KiB."""
    try:
        lines = [log_text(ln) for ln in log.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    return "\n".join(lines[-TERMINATION_LOG_LINES:]).encode()[-TERMINATION_MESSAGE_BYTES:].decode(errors="ignore")


class IpPool:
    """Pod IPs for launched pods: the pod network's lower half, less its host address."""

    def __init__(self, network: PodNetwork) -> None:
        self.network = network
        self._free = (str(ip) for ip in network.launched_range.hosts() if ip != network.host_ip)
        self._used: set[str] = set()
        self._lock = threading.Lock()

    def claim(self, ip: str) -> None:
        with self._lock:
            self._used.add(ip)

    def allocate(self) -> str:
        with self._lock:
            for ip in self._free:
                if ip not in self._used and not ip.endswith((".0", ".255")):
                    self._used.add(ip)
                    self.network.add_ip(ip)
                    return ip
        raise RuntimeError(f"launched-pod range {self.network.launched_range} is exhausted")


@dataclass
class ProbeState:
    successes: int = 0
    failures: int = 0
    next_at: float = 0.0
    ok: bool = False


@dataclass
class ContainerRun:
    spec: client.V1Container
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: str | None = None
    last_exit: dict[str, Any] | None = None
    terminated: dict[str, Any] | None = None
    backoff_until: float = 0.0
    started_mono: float = 0.0
    readiness: ProbeState = field(default_factory=ProbeState)
    liveness: ProbeState = field(default_factory=ProbeState)
    startup: ProbeState = field(default_factory=ProbeState)
    pumps: list[threading.Thread] = field(default_factory=list)
    container: str | None = None  # the podman container's name, in containers mode


class PodRunner(threading.Thread):
    """One pod: its processes, probes and status."""

    def __init__(
        self,
        core: client.CoreV1Api,
        pod: client.V1Pod,
        ip: str,
        pods_dir: Path,
        server: str,
        ca: Path,
        netns: list[str],
        dns: str,
    ) -> None:
        super().__init__(daemon=True, name=f"pod-{pod.metadata.namespace}/{pod.metadata.name}")
        self.core = core
        self.pod = pod
        self.ip = ip
        self.netns = netns
        self.dns = dns
        self.server = server
        self.ca = ca
        self.dir = pods_dir / f"{pod.metadata.namespace}_{pod.metadata.name}_{pod.metadata.uid}"
        self.runs = [ContainerRun(c) for c in pod.spec.containers]
        self.init_runs = [ContainerRun(c) for c in pod.spec.init_containers or []]
        self.initialized = not self.init_runs
        self.volumes = local_volumes(pod, self.dir, pods_dir.parent / "claims")
        self.stopping = threading.Event()
        self.stopped = threading.Event()
        self.grace = float(pod.spec.termination_grace_period_seconds or 30)
        self._last_status: str = ""
        self._stamp = ""
        self._published_at = 0.0
        self._start_time = now()
        try:  # a bad annotation fails this pod (an event), not the agent
            self.containers, self.mode_error = containers.mode(pod) == "containers", ""
        except ValueError as err:
            self.containers, self.mode_error = False, str(err)

    # --- set-up ------------------------------------------------------------------------------------
    def _token_kubeconfig(self) -> Path | None:
        """A kubeconfig holding a token bound to this pod for its ServiceAccount, as a kubelet would mount."""
        if self.pod.spec.automount_service_account_token is False:
            return None
        sa = self.pod.spec.service_account_name or "default"
        meta = self.pod.metadata
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                audiences=[],
                expiration_seconds=7 * 24 * 3600,
                bound_object_ref=client.V1BoundObjectReference(
                    api_version="v1", kind="Pod", name=meta.name, uid=meta.uid
                ),
            )
        )
        token = self.core.create_namespaced_service_account_token(sa, meta.namespace, request).status.token
        secrets = self.dir / "serviceaccount"
        secrets.mkdir(parents=True, exist_ok=True)
        (secrets / "token").write_text(token)
        (secrets / "namespace").write_text(meta.namespace)
        (secrets / "ca.crt").write_bytes(self.ca.read_bytes())
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "in-cluster", "cluster": {"server": self.server, "certificate-authority": str(self.ca)}}
            ],
            "users": [{"name": sa, "user": {"token": token}}],
            "contexts": [
                {"name": "in-cluster", "context": {"cluster": "in-cluster", "user": sa, "namespace": meta.namespace}}
            ],
            "current-context": "in-cluster",
        }
        path = secrets / "kubeconfig"
        path.write_text(yaml.safe_dump(kubeconfig))
        return path

    def _env(self, container: client.V1Container, kubeconfig: Path | None) -> dict[str, str]:
        host, port = self.server.removeprefix("https://").rsplit(":", 1)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(SHIM_DIR),
            "POD_IP": self.ip,
            "POD_NAMESPACE": self.pod.metadata.namespace,
            "INFLEET_CLUSTER_DNS": self.dns,
            "HOSTNAME": self.pod.metadata.name,
            "KUBERNETES_SERVICE_HOST": host,
            "KUBERNETES_SERVICE_PORT": port,
        }
        # host paths mean nothing inside an image, which sets its own caches
        passed = ("TRITON_INTERPRET", "OMP_NUM_THREADS") + (() if self.containers else ("INFLEET_CACHE", "HF_HOME"))
        for key in passed:
            if key in os.environ:
                env[key] = os.environ[key]
        if kubeconfig is not None:
            env["KUBECONFIG"] = str(kubeconfig)
        own = {}  # the container's own variables see its mounts; what the launcher passes on is host paths
        for source in container.env_from or []:
            own.update(self._env_from(source))
        for var in container.env or []:
            value = self._env_value(var)
            # as the kubelet does: $(NAME) in a plain value takes a variable defined before it, $$ is a literal $
            own[var.name] = expand(value, own) if var.value_from is None else value
        if self.containers:  # a container sees its volumes at their mountPaths
            return env | own
        mounts = mount_map(container, self.volumes)
        return env | {k: rewrite(v, mounts) for k, v in own.items()}

    def _secret_data(self, name: str, optional: bool | None) -> dict[str, bytes]:
        """A Secret's data, decoded; {} for an optional one that is missing."""
        try:
            data = self.core.read_namespaced_secret(name, self.pod.metadata.namespace).data or {}
        except ApiException as err:
            if err.status == 404 and optional:
                return {}
            raise RuntimeError(f"secret {name!r} not found") from err
        return {k: base64.b64decode(v) for k, v in data.items()}

    def _config_map_data(self, name: str, optional: bool | None, binary: bool = True) -> dict[str, bytes]:
        """A ConfigMap's data (and binaryData, for volumes: envFrom reads data alone) as bytes; {} for an optional
        one that is missing."""
        try:
            cm = self.core.read_namespaced_config_map(name, self.pod.metadata.namespace)
        except ApiException as err:
            if err.status == 404 and optional:
                return {}
            raise RuntimeError(f"configmap {name!r} not found") from err
        data = {k: v.encode() for k, v in (cm.data or {}).items()}
        return data | ({k: base64.b64decode(v) for k, v in (cm.binary_data or {}).items()} if binary else {})

    def _env_from(self, source: client.V1EnvFromSource) -> dict[str, str]:
        prefix = source.prefix or ""
        if source.secret_ref is not None:
            data = self._secret_data(source.secret_ref.name, source.secret_ref.optional)
        elif source.config_map_ref is not None:
            data = self._config_map_data(source.config_map_ref.name, source.config_map_ref.optional, binary=False)
        else:
            return {}
        return {prefix + k: v.decode() for k, v in data.items()}

    def _env_value(self, var: client.V1EnvVar) -> str:
        if var.value_from is None:
            return var.value or ""
        src = var.value_from
        if src.field_ref is not None:
            path = src.field_ref.field_path
            fields = {
                "metadata.name": self.pod.metadata.name,
                "metadata.namespace": self.pod.metadata.namespace,
                "metadata.uid": self.pod.metadata.uid,
                "spec.nodeName": self.pod.spec.node_name,
                "spec.serviceAccountName": self.pod.spec.service_account_name or "default",
                "status.podIP": self.ip,
                "status.hostIP": "127.0.0.1",
            }
            if path.startswith("metadata.labels['"):
                return str((self.pod.metadata.labels or {}).get(path[len("metadata.labels['") : -2], ""))
            if path.startswith("metadata.annotations['"):
                return str((self.pod.metadata.annotations or {}).get(path[len("metadata.annotations['") : -2], ""))
            return str(fields.get(path, ""))
        ns = self.pod.metadata.namespace
        if src.config_map_key_ref is not None:
            cm = self.core.read_namespaced_config_map(src.config_map_key_ref.name, ns)
            return str((cm.data or {}).get(src.config_map_key_ref.key, ""))
        if src.secret_key_ref is not None:
            secret = self.core.read_namespaced_secret(src.secret_key_ref.name, ns)
            return base64.b64decode((secret.data or {}).get(src.secret_key_ref.key, "")).decode()
        return ""

    # --- processes ---------------------------------------------------------------------------------
    def _container_argv(self, run: ContainerRun, env: dict[str, str]) -> list[str]:
        """`podman run` of the container's image, in the pod network namespace (host network without one)."""
        for local in mount_map(run.spec, self.volumes).values():
            os.chmod(local, 0o777)  # the image's non-root user writes its emptyDirs and claims
        netns = next((a.removeprefix("--net=") for a in self.netns if a.startswith("--net=")), None)
        host_paths = [Path(env["KUBECONFIG"]).parent, self.ca] if "KUBECONFIG" in env else []
        run.container = containers.container_name(self.pod, run.spec)
        containers.remove(run.container)  # a restart reuses the name
        argv = containers.run_argv(self.pod, run.spec, env, self.volumes, host_paths, netns, self.dir.parent)
        return argv

    def _spawn(self, run: ContainerRun, env: dict[str, str]) -> None:
        mounts = mount_map(run.spec, self.volumes)
        for local in mounts.values():
            Path(local).mkdir(parents=True, exist_ok=True)
        if self.containers:
            argv, proc_env = self._container_argv(run, env), containers.environment()
        else:
            argv, proc_env = self.netns + [rewrite(a, mounts) for a in container_argv(run.spec)], env
        path = self.dir / f"{run.spec.name}.log"
        if run.restarts and path.exists():  # what `kubectl logs --previous` shows
            path.replace(self.dir / f"{run.spec.name}.log.previous")
        run.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # one pipe keeps the order in which lines were written
            stdin=subprocess.DEVNULL,
            env=proc_env,
            cwd=run.spec.working_dir or self.dir,
            start_new_session=True,
        )
        log = CriLog(path, streams=1)
        run.pumps = [threading.Thread(target=log.pump, args=(run.proc.stdout, "stdout"), daemon=True)]
        for t in run.pumps:
            t.start()
        (self.dir / f"{run.spec.name}.pid").write_text(str(run.proc.pid))
        run.started_at = now()
        run.started_mono = time.monotonic()
        run.readiness = ProbeState()
        run.liveness = ProbeState()
        run.startup = ProbeState()

    def _kill(self, run: ContainerRun, grace: float) -> int | None:
        proc = run.proc
        if proc is None:
            return None
        code = None
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)  # `podman run` passes SIGTERM on to the container
            except ProcessLookupError:
                pass
            try:
                code = proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        if run.container is not None:  # a killed `podman run` leaves its container behind
            containers.remove(run.container)
        return proc.poll() if code is None else code

    # --- probes ------------------------------------------------------------------------------------
    def _port(self, container: client.V1Container, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in container.ports or []:
            if p.name == port:
                return int(p.container_port)
        raise ValueError(f"no container port named {port}")

    def _probe_once(self, container: client.V1Container, probe: client.V1Probe, env: dict[str, str]) -> bool:
        timeout = float(probe.timeout_seconds or 1)
        try:
            if probe.http_get is not None:
                scheme = (probe.http_get.scheme or "HTTP").lower()
                port = self._port(container, probe.http_get.port)
                url = f"{scheme}://{self.ip}:{port}{probe.http_get.path or '/'}"
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    return 200 <= resp.status < 400
            if probe.tcp_socket is not None:
                import socket

                with socket.create_connection((self.ip, self._port(container, probe.tcp_socket.port)), timeout=timeout):
                    return True
            if probe._exec is not None:
                if self.containers:
                    command = containers.exec_argv(self.pod, container, list(probe._exec.command))
                    env = containers.environment()
                else:
                    command = list(probe._exec.command)
                done = subprocess.run(command, env=env, timeout=timeout, capture_output=True)
                return done.returncode == 0
        except (urllib.error.URLError, OSError, ValueError, subprocess.TimeoutExpired):
            return False
        return True

    def _run_probe(
        self, run: ContainerRun, probe: client.V1Probe | None, state: ProbeState, env: dict[str, str]
    ) -> None:
        if probe is None:
            state.ok = True
            return
        t = time.monotonic()
        if t < run.started_mono + (probe.initial_delay_seconds or 0) or t < state.next_at:
            return
        state.next_at = t + (probe.period_seconds or 10)
        if self._probe_once(run.spec, probe, env):
            state.failures = 0
            state.successes += 1
            if state.successes >= (probe.success_threshold or 1):
                state.ok = True
        else:
            state.successes = 0
            state.failures += 1
            if state.failures >= (probe.failure_threshold or 3):
                state.ok = False

    # --- status ------------------------------------------------------------------------------------
    def _container_status(self, run: ContainerRun) -> dict[str, Any]:
        running = run.proc is not None and run.proc.poll() is None
        if running:
            state: dict[str, Any] = {"running": {"startedAt": run.started_at}}
        elif run.terminated is not None:
            state = {"terminated": run.terminated}
        elif run.restarts:
            state = {"waiting": {"reason": "CrashLoopBackOff"}}
        else:
            state = {"waiting": {"reason": "ContainerCreating" if self.initialized else "PodInitializing"}}
        status: dict[str, Any] = {
            "name": run.spec.name,
            "image": run.spec.image,
            "imageID": "",
            "containerID": (f"podman://{run.container}" if run.container else f"local://{run.proc.pid}")
            if running and run.proc
            else "",
            "ready": running and run.readiness.ok and run.startup.ok,
            "started": running and run.startup.ok,
            "restartCount": run.restarts,
            "state": state,
        }
        if run.last_exit is not None:
            status["lastState"] = {"terminated": run.last_exit}
        return status

    def _publish(self) -> None:
        statuses = [self._container_status(r) for r in self.runs]
        ready = all(s["ready"] for s in statuses)
        init_failed = any(r.terminated and r.terminated["exitCode"] != 0 for r in self.init_runs)
        if init_failed or all(r.terminated is not None for r in self.runs):
            done = not init_failed and all(r.terminated and r.terminated["exitCode"] == 0 for r in self.runs)
            phase = "Succeeded" if done else "Failed"
        else:
            phase = "Running" if self.initialized else "Pending"
        conditions = [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": str(self.initialized)},
            {"type": "ContainersReady", "status": str(ready)},
            {"type": "Ready", "status": str(ready)},
        ]
        body = {
            "phase": phase,
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "startTime": self._start_time,
            "conditions": conditions,
            "containerStatuses": statuses,
        }
        if self.init_runs:
            init = [self._container_status(r) for r in self.init_runs]
            for st, run in zip(init, self.init_runs, strict=True):
                st["ready"] = st["started"] = run.terminated is not None and run.terminated["exitCode"] == 0
            body["initContainerStatuses"] = init
        key = json.dumps(body, sort_keys=True)
        # unchanged: publish again now and then anyway, since the node lifecycle controller may have marked the pod
        # NotReady meanwhile (a late node heartbeat under load) and nothing else would ever set it back
        same = key == self._last_status
        if same and time.monotonic() - self._published_at < REASSERT_STATUS_SECONDS:
            return
        stamp = self._stamp if same else now()
        for cond in conditions:
            cond["lastTransitionTime"] = stamp
        try:
            self.core.patch_namespaced_pod_status(self.pod.metadata.name, self.pod.metadata.namespace, {"status": body})
            self._last_status, self._stamp, self._published_at = key, stamp, time.monotonic()
        except ApiException as err:
            if err.status == 404:
                self.stopping.set()

    def _event(self, reason: str, message: str, kind: str = "Normal") -> None:
        meta = self.pod.metadata
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{meta.name}.", namespace=meta.namespace),
            involved_object=client.V1ObjectReference(
                kind="Pod", name=meta.name, namespace=meta.namespace, uid=meta.uid, api_version="v1"
            ),
            reason=reason,
            message=message,
            type=kind,
            source=client.V1EventSource(component="infleet-launcher", host=self.pod.spec.node_name),
            first_timestamp=datetime.datetime.now(datetime.UTC),
            last_timestamp=datetime.datetime.now(datetime.UTC),
            count=1,
        )
        try:
            self.core.create_namespaced_event(meta.namespace, event)
        except ApiException:
            pass  # events are best effort, as for a kubelet

    # --- main loop ---------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        except Exception as err:  # a broken pod must not take the agent down
            self._event("Failed", f"launcher: {err}", "Warning")
            sys.stderr.write(f"launcher: pod {self.name}: {err!r}\n")
        finally:
            for run in [*self.init_runs, *self.runs]:
                self._kill(run, self.grace)
            self.stopped.set()

    def _logs_object(self) -> None:
        """KWOK's Logs object for this pod: the API server then serves `kubectl logs` (with -f, --tail,
        --previous) from the launcher's log files through KWOK's kubelet endpoint."""
        meta = self.pod.metadata
        owner = {"apiVersion": "v1", "kind": "Pod", "name": meta.name, "uid": meta.uid}
        logs = [
            {
                "containers": [c.name],
                "logsFile": str(self.dir / f"{c.name}.log"),
                "previousLogsFile": str(self.dir / f"{c.name}.log.previous"),
                "follow": True,
            }
            for c in [*(self.pod.spec.init_containers or []), *self.pod.spec.containers]
        ]
        body: dict[str, Any] = {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "Logs",
            "metadata": {"name": meta.name, "namespace": meta.namespace, "ownerReferences": [owner]},
            "spec": {"logs": logs},
        }
        self._kwok_object("logs", body)

    def _exec_object(self, envs: dict[str, dict[str, str]]) -> None:
        """KWOK's Exec object: `kubectl exec` runs the command as a local process in the pod's directory with the
        container's own plain variables (values from Secrets stay out of the object). It runs on the host, not in
        the pod's network namespace: the pod's IP is reachable from there, its localhost is not."""
        meta = self.pod.metadata
        owner = {"apiVersion": "v1", "kind": "Pod", "name": meta.name, "uid": meta.uid}
        execs = []
        for c in self.pod.spec.containers:
            plain = {v.name: envs[c.name][v.name] for v in c.env or [] if v.value_from is None}
            plain |= {k: envs[c.name][k] for k in ("POD_IP", "POD_NAMESPACE", "HOSTNAME", "PATH", "HOME")}
            execs.append(
                {
                    "containers": [c.name],
                    "local": {"workDir": str(self.dir), "envs": [{"name": k, "value": v} for k, v in plain.items()]},
                }
            )
        body = {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "Exec",
            "metadata": {"name": meta.name, "namespace": meta.namespace, "ownerReferences": [owner]},
            "spec": {"execs": execs},
        }
        self._kwok_object("execs", body)

    def _kwok_object(self, plural: str, body: dict[str, Any]) -> None:
        """Create (or replace a recreated pod's namesake) one of KWOK's per-pod objects; a fleet without its CRD
        goes without (logs stay readable with `infleet logs`)."""
        api = client.CustomObjectsApi(self.core.api_client)
        name = body["metadata"]["name"]
        args = ("kwok.x-k8s.io", "v1alpha1", body["metadata"]["namespace"], plural)
        try:
            api.create_namespaced_custom_object(*args, body)
        except ApiException as err:
            if err.status != 409:
                return
            old = api.get_namespaced_custom_object(*args, name)
            body["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            api.replace_namespaced_custom_object(*args, name, body)

    def _project_volumes(self) -> None:
        """Secret and ConfigMap volumes as files, as a kubelet writes them: every key, or the listed items at their
        paths. Written once, when the pod starts (a kubelet also refreshes them later)."""
        for v in self.pod.spec.volumes or []:
            source = v.secret or v.config_map
            if source is None:
                continue
            try:
                if v.secret:
                    data = self._secret_data(v.secret.secret_name, v.secret.optional)
                else:
                    data = self._config_map_data(v.config_map.name, v.config_map.optional)
            except RuntimeError as err:
                raise RuntimeError(f"volume {v.name!r}: {err}") from err
            chosen = {i.path: data[i.key] for i in source.items if i.key in data} if source.items else data
            for relative, content in chosen.items():
                path = self.volumes[v.name] / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)

    def _run(self) -> None:
        if self.mode_error:
            raise RuntimeError(self.mode_error)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._project_volumes()
        self._logs_object()
        kubeconfig = self._token_kubeconfig()
        policy = self.pod.spec.restart_policy or "Always"
        if not self._initialize(kubeconfig, policy):
            return
        self.initialized = True
        envs = {r.spec.name: self._env(r.spec, kubeconfig) for r in self.runs}
        self._exec_object(envs)
        for run in self.runs:
            self._spawn(run, envs[run.spec.name])
            self._event("Started", f"Started container {run.spec.name} as process {run.proc.pid if run.proc else '?'}")
        while not self.stopping.is_set():
            for run in self.runs:
                env = envs[run.spec.name]
                if run.proc is not None and run.proc.poll() is not None:
                    exit_info = self._exit_info(run)
                    code = exit_info["exitCode"]
                    run.proc = None
                    if policy == "Always" or (policy == "OnFailure" and code != 0):
                        run.last_exit = exit_info
                        run.restarts += 1
                        run.backoff_until = time.monotonic() + min(10.0, 2.0 ** (run.restarts - 1))
                        self._event(
                            "BackOff", f"Back-off restarting container {run.spec.name} (exit {code})", "Warning"
                        )
                    else:
                        run.terminated = exit_info
                if run.proc is None and run.terminated is None and time.monotonic() >= run.backoff_until:
                    self._spawn(run, env)
                if run.proc is None:
                    continue
                self._run_probe(run, run.spec.startup_probe, run.startup, env)
                if not run.startup.ok:
                    if run.spec.startup_probe and run.startup.failures >= (
                        run.spec.startup_probe.failure_threshold or 3
                    ):
                        self._event("Unhealthy", f"Startup probe failed for {run.spec.name}; restarting", "Warning")
                        self._kill(run, self.grace)
                    continue
                self._run_probe(run, run.spec.readiness_probe, run.readiness, env)
                self._run_probe(run, run.spec.liveness_probe, run.liveness, env)
                if run.spec.liveness_probe and run.liveness.failures >= (
                    run.spec.liveness_probe.failure_threshold or 3
                ):
                    self._event("Killing", f"Container {run.spec.name} failed liveness probe, will be restarted")
                    self._kill(run, self.grace)
            self._publish()
            self.stopping.wait(0.25)

    def _exit_info(self, run: ContainerRun) -> dict[str, Any]:
        assert run.proc is not None
        code = run.proc.returncode
        info: dict[str, Any] = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": run.started_at,
            "finishedAt": now(),
        }
        for t in run.pumps:  # the last lines reach the log once the pipes are drained
            t.join(timeout=2)
        if code != 0 and run.spec.termination_message_policy == "FallbackToLogsOnError":
            message = termination_message(self.dir / f"{run.spec.name}.log")
            if message:
                info["message"] = message
        return info

    def _initialize(self, kubeconfig: Path | None, policy: str) -> bool:
        """Run the init containers in order, each to success, as a kubelet does: a failed one is retried with
        backoff (restartPolicy Never: the pod fails). False when the pod stops or fails before they all succeed."""
        for run in self.init_runs:
            env = self._env(run.spec, kubeconfig)
            while not self.stopping.is_set():
                if run.proc is None and time.monotonic() >= run.backoff_until:
                    self._spawn(run, env)
                    self._event("Started", f"Started init container {run.spec.name}")
                if run.proc is not None and run.proc.poll() is not None:
                    exit_info = self._exit_info(run)
                    run.proc = None
                    if exit_info["exitCode"] == 0:
                        run.terminated = exit_info
                        break
                    if policy == "Never":
                        run.terminated = exit_info
                        self._publish()
                        return False
                    run.last_exit = exit_info
                    run.restarts += 1
                    run.backoff_until = time.monotonic() + min(10.0, 2.0 ** (run.restarts - 1))
                    last = exit_info.get("message", "").splitlines()[-1:] or [f"exit {exit_info['exitCode']}"]
                    why = f"Back-off restarting init container {run.spec.name}: {last[0]}"
                    self._event("BackOff", why, "Warning")
                self._publish()
                self.stopping.wait(0.25)
        return not self.stopping.is_set()

    def stop(self, grace: float | None = None) -> None:
        if grace is not None:
            self.grace = grace
        self.stopping.set()
