"""Start and stop the local fleet's processes on loopback: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, KWOK, and infleet's node agent (pods -> local processes, Service proxy).

Each component is a detached process with a pid file and a log under the fleet directory, so `up` can
return while the fleet keeps running, `status` can tell a crashed component, and `down` can stop exactly
what `up` started.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from infleet.cluster import build, lws, objectstore, prometheus
from infleet.cluster.network import PodNetwork
from infleet.cluster.pki import Pki, ensure_pki

FLEET_DIR = Path(os.environ.get("INFLEET_FLEET_DIR", build.CACHE / "fleet"))
PORT_BASE = int(os.environ.get("INFLEET_FLEET_PORT_BASE", "16000"))

# Service ClusterIPs are loopback addresses (every 127/8 address works on Linux without set-up), answered by the
# node agent's proxy; pod IPs come from the pod network (network.py). Both overridable, so that a second fleet
# (a test of `down`, say) can run beside the first.
SERVICE_CIDR = os.environ.get("INFLEET_SERVICE_CIDR", "127.96.0.0/16")

# The images the launcher runs for real; pods of any other image are KWOK's.
LAUNCHED_IMAGE_PREFIX = "infleet/"
# Every write to an infleet.dev object, by whom and where (the tests count a reconcile's writes from it); nothing else.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived", "ResponseStarted"],
    "rules": [
        {"level": "Metadata", "verbs": ["create", "update", "patch"], "resources": [{"group": "infleet.dev"}]},
        {"level": "None"},
    ],
}


@dataclass(frozen=True)
class Ports:
    """Every port the fleet listens on, as offsets from one base so that two fleets can run side by side."""

    base: int = PORT_BASE

    @property
    def etcd_client(self) -> int:
        return self.base + 379

    @property
    def etcd_peer(self) -> int:
        return self.base + 380

    @property
    def apiserver(self) -> int:
        return self.base + 443

    @property
    def controller_manager(self) -> int:
        return self.base + 257

    @property
    def scheduler(self) -> int:
        return self.base + 259

    @property
    def kwok(self) -> int:
        return self.base + 247

    @property
    def agent(self) -> int:
        return self.base + 248

    @property
    def prometheus(self) -> int:
        return self.base + 90

    # the object store (objectstore.py); each takes its port and the next (gRPC)
    @property
    def weed_master(self) -> int:
        return self.base + 600

    @property
    def weed_volume(self) -> int:
        return self.base + 602

    @property
    def weed_filer(self) -> int:
        return self.base + 604

    @property
    def s3(self) -> int:
        return self.base + 606

    # LeaderWorkerSet's controller (lws.py): its webhook server and health probe
    @property
    def lws_webhook(self) -> int:
        return self.base + 608

    @property
    def lws_health(self) -> int:
        return self.base + 609

    def all(self) -> list[int]:
        return [
            self.etcd_client,
            self.etcd_peer,
            self.apiserver,
            self.controller_manager,
            self.scheduler,
            self.kwok,
            self.agent,
            self.prometheus,
            *(q for port in (self.weed_master, self.weed_volume, self.weed_filer, self.s3) for q in (port, port + 1)),
            self.lws_webhook,
            self.lws_health,
        ]


@dataclass
class Component:
    name: str
    argv: list[str]
    ready: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)


class Fleet:
    """Paths and process control for one local fleet."""

    def __init__(self, directory: Path = FLEET_DIR, ports: Ports | None = None) -> None:
        self.dir = directory
        self.ports = ports or Ports()
        self.bins = build.binaries()
        self.network = PodNetwork.from_env(self.ports.base)

    # --- paths -----------------------------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def pki(self) -> Pki:
        return Pki(self.dir / "pki")

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    def log_path(self, name: str) -> Path:
        return self.dir / "logs" / f"{name}.log"

    @property
    def audit_log(self) -> Path:
        """The API server's audit log: one JSON line per write to an infleet.dev object (AUDIT_POLICY)."""
        return self.log_path("audit")

    def pid_path(self, name: str) -> Path:
        return self.dir / "run" / f"{name}.pid"

    # --- process control -------------------------------------------------------------------------
    def pid(self, name: str) -> int | None:
        try:
            pid = int(self.pid_path(name).read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if process_alive(pid) else None

    def start(self, comp: Component, timeout: float = 120) -> None:
        if self.pid(comp.name) is not None:
            return
        self.log_path(comp.name).parent.mkdir(parents=True, exist_ok=True)
        self.pid_path(comp.name).parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path(comp.name), "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            comp.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **comp.env},
            cwd=self.dir,
        )
        self.pid_path(comp.name).write_text(str(proc.pid))
        deadline = time.monotonic() + timeout
        while not comp.ready():
            if proc.poll() is not None:
                tail = self.log_path(comp.name).read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{comp.name} exited with {proc.returncode} during start-up:\n{tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{comp.name} not ready after {timeout:.0f}s; see {self.log_path(comp.name)}")
            time.sleep(0.2)

    def stop(self, name: str, grace: float = 10) -> None:
        pid = self.pid(name)
        if pid is not None:
            _kill_group(pid, grace)
        self.pid_path(name).unlink(missing_ok=True)

    # --- health ------------------------------------------------------------------------------------
    def _https_ok(self, url: str, verify: bool = True) -> bool:
        """With `verify=False` for components that serve /healthz with a self-signed loopback cert."""
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        ctx.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def apiserver_ready(self) -> bool:
        return self._https_ok(f"{self.server}/readyz")

    def _audit_policy(self) -> Path:
        path = self.dir / "audit-policy.json"
        path.parent.mkdir(parents=True, exist_ok=True)  # components() may be asked before up() made the directory
        path.write_text(json.dumps(AUDIT_POLICY))
        return path

    # --- components --------------------------------------------------------------------------------
    def components(self) -> list[Component]:
        b, p, pki = self.bins, self.ports, self.pki
        kc = str(self.kubeconfig)
        return [
            Component(
                "etcd",
                [
                    str(b.etcd),
                    f"--data-dir={self.dir / 'etcd'}",
                    f"--listen-client-urls=http://127.0.0.1:{p.etcd_client}",
                    f"--advertise-client-urls=http://127.0.0.1:{p.etcd_client}",
                    f"--listen-peer-urls=http://127.0.0.1:{p.etcd_peer}",
                    f"--initial-advertise-peer-urls=http://127.0.0.1:{p.etcd_peer}",
                    f"--initial-cluster=default=http://127.0.0.1:{p.etcd_peer}",
                    "--unsafe-no-fsync",  # a throwaway test store: durability is not worth the latency
                    "--quota-backend-bytes=4294967296",
                    "--log-level=warn",
                ],
                lambda: _http_ok(f"http://127.0.0.1:{p.etcd_client}/health"),
            ),
            Component(
                "kube-apiserver",
                [
                    str(b.kube_apiserver),
                    f"--etcd-servers=http://127.0.0.1:{p.etcd_client}",
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    f"--secure-port={p.apiserver}",
                    f"--tls-cert-file={pki.serving_cert}",
                    f"--tls-private-key-file={pki.serving_key}",
                    f"--client-ca-file={pki.ca_cert}",
                    f"--requestheader-client-ca-file={pki.ca_cert}",
                    "--requestheader-allowed-names=front-proxy-client",
                    "--requestheader-username-headers=X-Remote-User",
                    "--requestheader-group-headers=X-Remote-Group",
                    "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                    f"--service-account-key-file={pki.sa_pub}",
                    f"--service-account-signing-key-file={pki.sa_key}",
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                    "--authorization-mode=RBAC",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    "--allow-privileged=true",
                    "--endpoint-reconciler-type=none",
                    "--max-requests-inflight=2000",
                    "--max-mutating-requests-inflight=1000",
                    f"--audit-policy-file={self._audit_policy()}",
                    f"--audit-log-path={self.audit_log}",
                    "--audit-log-maxsize=100",
                    "--audit-log-maxbackup=1",
                    "--v=1",
                ],
                self.apiserver_ready,
            ),
            Component(
                "kube-controller-manager",
                [
                    str(b.kube_controller_manager),
                    f"--kubeconfig={kc}",
                    f"--authentication-kubeconfig={kc}",
                    f"--authorization-kubeconfig={kc}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={p.controller_manager}",
                    f"--service-account-private-key-file={pki.sa_key}",
                    f"--root-ca-file={pki.ca_cert}",
                    "--use-service-account-credentials=true",
                    "--leader-elect=false",
                    "--controllers=*,-nodeipam",
                    "--kube-api-qps=200",
                    "--kube-api-burst=400",
                    "--concurrent-deployment-syncs=10",
                    # Simulated nodes never fail on their own, and KWOK's heartbeats arrive minutes apart on a busy
                    # two-core machine: a short grace period only marks every node NotReady now and then.
                    "--node-monitor-grace-period=1h",
                    "--concurrent-replicaset-syncs=10",
                    "--v=1",
                ],
                lambda: self._https_ok(f"https://127.0.0.1:{p.controller_manager}/healthz", verify=False),
            ),
            Component(
                "kube-scheduler",
                [
                    str(b.kube_scheduler),
                    f"--kubeconfig={kc}",
                    f"--authentication-kubeconfig={kc}",
                    f"--authorization-kubeconfig={kc}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={p.scheduler}",
                    "--leader-elect=false",
                    "--kube-api-qps=200",
                    "--kube-api-burst=400",
                    "--v=1",
                ],
                lambda: self._https_ok(f"https://127.0.0.1:{p.scheduler}/healthz", verify=False),
            ),
            Component(
                "kwok",
                [
                    str(b.kwok),
                    f"--kubeconfig={kc}",
                    "--manage-all-nodes=false",
                    "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                    f"--cidr={self.network.kwok_range[1]}/{self.network.kwok_range.prefixlen}",
                    "--node-ip=127.0.0.1",
                    # the nodes' "kubelet": the API server reaches it for `kubectl logs` and `kubectl exec` (KWOK's
                    # Logs and Exec objects, written by the launcher, name each container's log file and directory)
                    f"--node-port={p.kwok}",
                    f"--server-address=127.0.0.1:{p.kwok}",
                    f"--tls-cert-file={pki.serving_cert}",
                    f"--tls-private-key-file={pki.serving_key}",
                    "--enable-crds=Logs,Exec",
                    "--node-lease-duration-seconds=40",
                    *[f"--config={s}" for s in self.kwok_stage_paths()],
                ],
                lambda: self._https_ok(f"https://127.0.0.1:{p.kwok}/healthz", verify=False),
            ),
            Component(
                "node-agent",
                [
                    sys.executable,
                    "-m",
                    "infleet.cluster.agent",
                    f"--fleet-dir={self.dir}",
                    f"--port={p.agent}",
                    f"--port-base={p.base}",
                ],
                lambda: _http_ok(f"http://127.0.0.1:{p.agent}/healthz"),
            ),
            Component(
                "prometheus",
                [
                    shutil.which("prometheus") or "prometheus",  # installed by build.ensure_all
                    f"--config.file={self.dir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.dir / 'prometheus'}",
                    f"--web.listen-address=127.0.0.1:{p.prometheus}",
                    "--web.enable-lifecycle",
                    "--storage.tsdb.retention.time=7d",
                    "--log.level=warn",
                ],
                lambda: _http_ok(f"{self.prometheus_url}/-/ready"),
            ),
            Component("objectstore", objectstore.argv(self), lambda: objectstore.ready(self)),
            *([lws.component(self)] if lws.config_path(self).exists() else []),
        ]

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.prometheus}"

    @property
    def prometheus_url_for_pods(self) -> str:
        """The same Prometheus as seen from the pod network (the node agent forwards it)."""
        return f"http://{self.network.host_ip}:{self.ports.prometheus}"

    def kwok_stage_paths(self) -> list[Path]:
        return [self.dir / "kwok-stages" / src.name for src in self.bins.kwok_stages]

    def write_kwok_stages(self) -> None:
        """KWOK's stock stages, narrowed so KWOK leaves alone the pods the launcher runs for real."""
        (self.dir / "kwok-stages").mkdir(parents=True, exist_ok=True)
        not_launched = {
            "key": f'.spec.containers.[] | .image | select(startswith("{LAUNCHED_IMAGE_PREFIX}"))',
            "operator": "DoesNotExist",
        }
        for src, dest in zip(self.bins.kwok_stages, self.kwok_stage_paths(), strict=True):
            stage = yaml.safe_load(src.read_text())
            if stage["spec"]["resourceRef"]["kind"] == "Pod":
                selector = stage["spec"].setdefault("selector", {})
                selector.setdefault("matchExpressions", []).append(not_launched)
            dest.write_text(yaml.safe_dump(stage, sort_keys=False))

    def write_kubeconfig(self) -> None:
        pki = self.pki
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "infleet", "cluster": {"server": self.server, "certificate-authority": str(pki.ca_cert)}}
            ],
            "users": [
                {
                    "name": "infleet-admin",
                    "user": {"client-certificate": str(pki.admin_cert), "client-key": str(pki.admin_key)},
                }
            ],
            "contexts": [{"name": "infleet", "context": {"cluster": "infleet", "user": "infleet-admin"}}],
            "current-context": "infleet",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))
        self.kubeconfig.chmod(0o600)

    def up(self, log: Callable[[str], None] = print) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.network.up()
        ensure_pki(self.pki.dir, [str(self.network.host_ip)])
        self.write_kubeconfig()
        self.write_kwok_stages()
        prometheus.write_config(self.dir / "prometheus.yml", self.ports.agent)
        objectstore.write_config(self)
        for comp in self.components():
            started = time.monotonic()
            already = self.pid(comp.name) is not None
            if comp.name == "kwok":
                self.install_kwok_crds()  # KWOK watches its Logs objects from the start
            self.start(comp)
            if not already:
                log(f"  {comp.name:<24} started in {time.monotonic() - started:.1f}s")
        if lws.wanted():
            lws.enable(self)

    def install_kwok_crds(self) -> None:
        from kubernetes import client, config, utils

        api = config.new_client_from_config(str(self.kubeconfig))
        for path in self.bins.kwok_crds:
            try:
                utils.create_from_yaml(api, str(path))
            except utils.FailToCreateError as err:
                if any(e.status != 409 for e in err.api_exceptions):  # 409: there already
                    raise
        ext = client.ApiextensionsV1Api(api)
        for path in self.bins.kwok_crds:
            name = yaml.safe_load(path.read_text())["metadata"]["name"]
            deadline = time.monotonic() + 30
            while not any(
                c.type == "Established" and c.status == "True"
                for c in ext.read_custom_resource_definition(name).status.conditions or []
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"CRD {name} not established after 30s")
                time.sleep(0.2)

    def down(self) -> None:
        for comp in reversed(self.components()):
            self.stop(comp.name)
        self.network.down()

    def status(self) -> dict[str, str]:
        result = {}
        for comp in self.components():
            if self.pid_path(comp.name).exists() and self.pid(comp.name) is None:
                result[comp.name] = "crashed (pid file left, process gone; see " + str(self.log_path(comp.name)) + ")"
            elif self.pid(comp.name) is None:
                result[comp.name] = "stopped"
            else:
                result[comp.name] = "running" if comp.ready() else "running, not ready"
        return result


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


def _kill_group(pid: int, grace: float) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after the grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not process_alive(pid):
                return
            time.sleep(0.1)
