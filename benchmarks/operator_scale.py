"""How the operator scales: N InferenceDeployments on a 1,000-node simulated fleet, beside the plain Deployment
controller doing the equivalent work.

Brings up its own throwaway fleet (separate directory, ports, service and pod CIDRs, so a running fleet is left
alone), installs the CRDs and, for each N:

- peer: N plain Deployments with exactly the pod template the operator renders (single-GPU replicas spread over the
  H100 and A100 pools, a non-infleet image so KWOK fakes the pods), created at once; time until every one is
  available. This is the floor: the operator's Deployments go through the same controllers.
- operator: the operator as a subprocess, N InferenceDeployments created at once; time until every one is Ready
  (status condition).

Reported per run: seconds until all are ready, p50/p99 of each object's own time from creation to ready (from a
watch), API requests the operator sent (its own counter, per deployment and per reconcile), the API server's request
counts by resource, the operator's peak resident memory (VmHWM) and its reconcile errors; then the ratio of the
operator's all-Ready time to the peer's all-available time. Also: where the time goes (`phases`, from the operator's
histograms: kopf's dispatch, queueing for a reconcile slot, the reconcile's work and its API requests), writes per
deployment (to the InferenceDeployment, and owned objects), a steady-state resync (a restarted operator resumes every
deployment; the API server's write count meanwhile), the 1-minute load average, and each goal as met / not met.

    python benchmarks/operator_scale.py [--counts 100 1000] [--nodes 1000] [--port-base 18000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from infleet.cluster import build
from infleet.cluster.testing import wait_for
from infleet.operator import api, resources, status_writer

ROOT = Path(__file__).resolve().parents[1]
PRODUCTS = ("NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-80GB")
FAKE_IMAGE = "registry.local/fake-runtime:1"  # not an infleet image: KWOK fakes the pod and marks it Ready
TIER = "bf16"
GPUS_PER_NODE = 8
CREATORS = 8  # parallel POSTs that create a run's objects
UNUSED_COMPONENTS = ("prometheus", "node-agent")  # fleet parts this benchmark does not use
# the API server resources whose request counts say what a run cost (node heartbeats and leases are background)
RESOURCES = ("inferencedeployments", "deployments", "replicasets", "pods", "services", "poddisruptionbudgets", "events")


# ---- the fleet --------------------------------------------------------------------------------------------------


def fleet_env(
    directory: Path, port_base: int, service_cidr: str = "127.95.0.0/16", pod_cidr: str = "10.246.0.0/16"
) -> dict[str, str]:
    """Everything that keeps this fleet apart from the shared one: directory, ports, service and pod networks."""
    env = {
        **os.environ,
        "INFLEET_FLEET_DIR": str(directory),
        "INFLEET_FLEET_PORT_BASE": str(port_base),
        "INFLEET_SERVICE_CIDR": service_cidr,
        "INFLEET_POD_CIDR": pod_cidr,
    }
    env["KUBECONFIG"] = str(directory / "kubeconfig")
    return env


def kubectl(env: Mapping[str, str], *args: str, stdin: str | None = None, timeout: float = 1800) -> str:
    cmd = [str(build.binaries().kubectl), f"--kubeconfig={env['KUBECONFIG']}", *args]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout, env=dict(env))
    if proc.returncode:
        raise RuntimeError(f"kubectl {' '.join(args[:3])}: {proc.stderr[-2000:]}")
    return proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- what is measured -------------------------------------------------------------------------------------------

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})? ([0-9.eE+-]+|NaN|[+-]Inf)$")


def parse_metrics(text: str) -> Samples:
    """Prometheus text -> {(name, sorted labels): value}."""
    out: Samples = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m:
            labels = tuple(sorted(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or "")))
            out[(m.group(1), labels)] = float(m.group(3))
    return out


def total(samples: Samples, name: str, **match: str) -> float:
    return sum(v for (n, labels), v in samples.items() if n == name and match.items() <= dict(labels).items())


def delta(after: Samples, before: Samples, name: str, **match: str) -> float:
    return total(after, name, **match) - total(before, name, **match)


def operator_metrics(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        return parse_metrics(resp.read().decode())


def apiserver_metrics(env: Mapping[str, str]) -> Samples:
    text = kubectl(env, "get", "--raw", "/metrics", timeout=120)
    return {k: v for k, v in parse_metrics(text).items() if k[0] == "apiserver_request_total"}


def apiserver_requests(after: Samples, before: Samples) -> dict[str, dict[str, int]]:
    """resource -> verb -> requests the API server answered during the run (watches left out)."""
    out: dict[str, dict[str, int]] = {}
    for (name, labels), value in after.items():
        lab = dict(labels)
        if lab.get("resource") not in RESOURCES or lab.get("verb") in ("WATCH", "CONNECT"):
            continue
        got = value - before.get((name, labels), 0.0)
        if got:
            verbs = out.setdefault(lab["resource"], {})
            verbs[lab["verb"]] = verbs.get(lab["verb"], 0) + int(got)
    return out


def memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
    except OSError:
        pass
    return fields


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fleet_cpu(env: Mapping[str, str], extra: Mapping[str, int] | None = None) -> dict[str, float]:
    """CPU seconds used so far by each of the fleet's processes (its pid files) and by `extra` (name -> pid): on 2
    cores these share the machine, so their sum over a run says which one the run waited for."""
    pids = {f.stem: int(f.read_text()) for f in (Path(env["INFLEET_FLEET_DIR"]) / "run").glob("*.pid")}
    out = {}
    for name, pid in {**pids, **(extra or {}), "benchmark": os.getpid()}.items():
        try:
            out[name] = cpu_seconds(pid)
        except (OSError, ValueError):
            continue
    return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class ReadyWatcher:
    """Watches one kind in one namespace and records when each object was first seen and first ready: each
    object's own time to ready, at a finer grain than any poll. Reconnects (and relists after 410 Gone) by itself."""

    def __init__(
        self, api_client: client.ApiClient, group: str, version: str, namespace: str, plural: str, is_ready: Callable
    ) -> None:
        self.custom = client.CustomObjectsApi(api_client)
        self.args = (group, version, namespace, plural)
        self.is_ready = is_ready
        self.seen: dict[str, float] = {}
        self.ready: dict[str, float] = {}
        self.modified: dict[str, list[str]] = {}  # name -> a summary of its status after each MODIFIED event
        self.lock = threading.Lock()
        self.stopped = False
        self._watch: watch.Watch | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> ReadyWatcher:
        self.thread.start()
        wait_for(lambda: self._watch is not None, timeout=30, what="the watch to open")
        time.sleep(0.5)
        return self

    def _run(self) -> None:
        version: str | None = None
        while not self.stopped:
            self._watch = watch.Watch()
            kwargs: dict[str, Any] = {"timeout_seconds": 300}
            if version:
                kwargs["resource_version"] = version
            try:
                for event in self._watch.stream(self.custom.list_namespaced_custom_object, *self.args, **kwargs):
                    self.observe(event["object"])
                    if event["type"] == "MODIFIED":
                        name = event["object"]["metadata"]["name"]
                        self.modified.setdefault(name, []).append(summary(event["object"]))
                version = self._watch.resource_version
            except ApiException as err:
                version = None if err.status == 410 else version
                time.sleep(1)
            except (urllib3.exceptions.HTTPError, OSError):
                time.sleep(1)

    def observe(self, obj: Mapping[str, Any], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        name = obj["metadata"]["name"]
        with self.lock:
            self.seen.setdefault(name, now)
            if name not in self.ready and self.is_ready(obj):
                self.ready[name] = now

    def stop(self) -> None:
        self.stopped = True
        if self._watch is not None:
            self._watch.stop()

    def latencies(self) -> list[float]:
        with self.lock:
            return [self.ready[n] - self.seen[n] for n in self.ready]


def summary(obj: Mapping[str, Any]) -> str:
    """One line of an object's status: its counts and each condition's status and reason."""
    st = obj.get("status") or {}
    conditions = " ".join(f"{c.get('type')}={c.get('status')}/{c.get('reason')}" for c in st.get("conditions") or [])
    return (
        f"gen {st.get('observedGeneration')} replicas {st.get('replicas')} ready {st.get('readyReplicas')} {conditions}"
    )


def writes_per_object(watcher: ReadyWatcher, examples: int = 3) -> dict[str, Any]:
    """How many objects changed how many times (each change is one write that made a new resourceVersion), and the
    status after each change of the first few that changed more than twice."""
    counts = [len(watcher.modified.get(n, [])) for n in watcher.seen]
    spread = {str(k): counts.count(k) for k in sorted(set(counts))}
    over = {n: v for n, v in sorted(watcher.modified.items()) if len(v) > 2}
    return {"objects_by_changes": spread, "over_two": dict(list(over.items())[:examples])}


def idep_ready(obj: Mapping[str, Any]) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def deployment_available(obj: Mapping[str, Any]) -> bool:
    spec, st = obj.get("spec") or {}, obj.get("status") or {}
    return (
        st.get("observedGeneration", 0) >= obj["metadata"].get("generation", 0)
        and st.get("availableReplicas", 0) >= spec.get("replicas", 1)
        and st.get("updatedReplicas", 0) >= spec.get("replicas", 1)
    )


# ---- the objects ------------------------------------------------------------------------------------------------


def idep_spec(i: int) -> dict[str, Any]:
    return {
        "model": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
        "runtime": {"image": FAKE_IMAGE},
        "accelerator": {"type": PRODUCTS[i % len(PRODUCTS)]},
        "quantization": {"tier": TIER},
        "replicas": 1,
    }


def idep(name: str, i: int) -> dict[str, Any]:
    return {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name}, "spec": idep_spec(i)}


def plain_deployment(name: str, namespace: str, i: int) -> dict[str, Any]:
    """The Deployment the operator would render for deployment i, with no owner: the peer's unit of work."""
    spec = api.InferenceDeploymentSpec.model_validate(idep_spec(i))
    owner = resources.Owner(name=name, namespace=namespace, uid="00000000-0000-0000-0000-000000000000")
    dep = resources.deployment(spec, owner, TIER, resources.layout(spec, GPUS_PER_NODE))
    del dep["metadata"]["ownerReferences"]
    return dep


# ---- one run ----------------------------------------------------------------------------------------------------


class Run:
    """A fresh namespace, a watch on the kind that says ready, and the wait until all N are."""

    def __init__(self, env: Mapping[str, str], label: str, count: int) -> None:
        self.env, self.count = env, count
        self.api_client = config.new_client_from_config(env["KUBECONFIG"])
        self.core = client.CoreV1Api(self.api_client)
        self.namespace = f"{label}-{count}-{os.getpid()}"
        self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=self.namespace)))
        # pods cannot be created before the controller-manager made the namespace's default ServiceAccount
        wait_for(
            lambda: self.core.list_namespaced_service_account(self.namespace).items,
            timeout=300,
            what=f"the default ServiceAccount of {self.namespace}",
        )

    def wait(
        self,
        watcher: ReadyWatcher,
        objects: list[dict[str, Any]],
        timeout: float,
        sample: Callable[[], None] = lambda: None,
        processes: Mapping[str, int] | None = None,
    ) -> dict[str, Any]:
        """Create `objects` at once and wait until the watcher saw all ready. Created by parallel POSTs (kubectl
        apply sends one object at a time, and a 1,000-object apply would measure kubectl more than controllers)."""
        custom = client.CustomObjectsApi(self.api_client)

        def create(obj: dict[str, Any]) -> None:
            group, _, version = obj["apiVersion"].rpartition("/")
            plural = watcher.args[3]
            custom.create_namespaced_custom_object(group, version, self.namespace, plural, obj)

        cpu_before = fleet_cpu(self.env, processes)
        start = time.monotonic()
        load = [os.getloadavg()[0]]
        with ThreadPoolExecutor(max_workers=CREATORS) as pool:
            list(pool.map(create, objects))
        applied = time.monotonic() - start
        last_report = start
        while len(watcher.ready) < self.count and time.monotonic() - start < timeout:
            sample()
            load.append(os.getloadavg()[0])
            if time.monotonic() - last_report > 30:
                last_report = time.monotonic()
                print(f"   {last_report - start:6.0f}s: {len(watcher.ready)}/{self.count} ready", flush=True)
            time.sleep(1.0)
        elapsed = time.monotonic() - start
        cpu_after = fleet_cpu(self.env, processes)
        cpu_used = {name: cpu_after[name] - t0 for name, t0 in cpu_before.items() if name in cpu_after}
        ready_at = sorted(watcher.ready.values())
        latencies = watcher.latencies()
        return {
            "deployments": self.count,
            "ready": len(ready_at),
            "timed_out": len(ready_at) < self.count,
            "create_seconds": round(applied, 2),
            "first_ready_seconds": round(ready_at[0] - start, 2) if ready_at else None,
            "all_ready_seconds": round(ready_at[-1] - start if len(ready_at) == self.count else elapsed, 2),
            "per_deployment_p50_seconds": round(percentile(latencies, 0.5), 2),
            "per_deployment_p99_seconds": round(percentile(latencies, 0.99), 2),
            "per_deployment_mean_seconds": round(statistics.fmean(latencies), 2) if latencies else None,
            "load_average_1m": {"min": round(min(load), 2), "max": round(max(load), 2)},
            "cpu_seconds_by_process": {  # from the first create until the wait ended, most first
                name: round(used, 1) for name, used in sorted(cpu_used.items(), key=lambda kv: -kv[1]) if used >= 0.1
            },
        }


def run_peer(env: Mapping[str, str], count: int, timeout: float) -> dict[str, Any]:
    run = Run(env, "plain", count)
    watcher = ReadyWatcher(run.api_client, "apps", "v1", run.namespace, "deployments", deployment_available).start()
    before = apiserver_metrics(env)
    try:
        objects = [plain_deployment(f"d{i:04d}", run.namespace, i) for i in range(count)]
        result = run.wait(watcher, objects, timeout)
    finally:
        watcher.stop()
    time.sleep(5)  # trailing status updates
    result["apiserver_requests"] = apiserver_requests(apiserver_metrics(env), before)
    return result


class Operator:
    """The operator as a subprocess watching one namespace, with its metrics port and memory at hand."""

    def __init__(self, env: Mapping[str, str], namespace: str, log_path: Path, profile: bool = False) -> None:
        self.metrics_port, self.health_port = free_port(), free_port()
        self.log_path, self.profiled = log_path, profile
        cmd = [sys.executable, "-m", "infleet.operator", "run", "--namespace", namespace]
        cmd += ["--metrics-port", str(self.metrics_port), "--health-port", str(self.health_port)]
        if profile:  # py-spy's collapsed stacks (flamegraph.pl / speedscope read them) beside the log
            out = log_path.with_suffix(".stacks.txt")
            cmd = ["py-spy", "record", "--format", "raw", "--rate", "50", "--output", str(out), "--", *cmd]
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, env=dict(env), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        wait_for(self.healthy, timeout=120, what=f"the operator's /healthz (log: {log_path})")
        self.peak_rss_kib = 0

    def healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the operator exited with {self.proc.returncode}; see {self.log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=5) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    @property
    def pid(self) -> int:
        """The operator's own process (under py-spy, its child)."""
        if not self.profiled:
            return self.proc.pid
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return int(children[0]) if children else self.proc.pid

    def sample(self) -> None:
        self.peak_rss_kib = max(self.peak_rss_kib, memory_kib(self.pid).get("VmRSS", 0))

    def failed_handlers(self) -> int:
        """Handler runs kopf logged as failed (temporarily or for good): errors the metrics may not see."""
        return sum("failed" in line and "Handler" in line for line in self.log_path.open(errors="replace"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT if self.profiled else signal.SIGTERM)  # py-spy writes on SIGINT
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_operator(
    env: Mapping[str, str], count: int, timeout: float, log_dir: Path, profile: bool = False
) -> dict[str, Any]:
    run = Run(env, "idep", count)
    op = Operator(env, run.namespace, log_dir / f"operator-{count}.log", profile)
    watcher = ReadyWatcher(run.api_client, api.GROUP, api.VERSION, run.namespace, api.PLURAL, idep_ready)
    try:
        watcher.start()
        before, server_before = operator_metrics(op.metrics_port), apiserver_metrics(env)
        cpu_before = cpu_seconds(op.pid)
        result = run.wait(
            watcher, [idep(f"d{i:04d}", i) for i in range(count)], timeout, op.sample, {"operator": op.pid}
        )
        time.sleep(status_writer.SETTLE + 5)  # trailing status writes: what waited for a write goes by then
        changes = writes_per_object(watcher)
        after, server_after = operator_metrics(op.metrics_port), apiserver_metrics(env)
        op.sample()
        memory = memory_kib(op.pid)
        cpu = cpu_seconds(op.pid) - cpu_before
    finally:
        watcher.stop()
        op.stop()
    result["namespace"] = run.namespace
    requests = delta(after, before, "infleet_operator_api_requests_total")
    reconciles = delta(after, before, "infleet_operator_reconcile_total")
    seconds = delta(after, before, "infleet_operator_reconcile_duration_seconds_sum")
    by_kind: dict[str, int] = {}
    by_trigger: dict[str, int] = {}
    for (name, labels), value in after.items():
        lab, got = dict(labels), int(value - before.get((name, labels), 0.0))
        if name == "infleet_operator_api_requests_total" and got:
            by_kind[f"{lab['verb']} {lab['kind']}"] = got
        if name == "infleet_operator_reconcile_total" and got:
            by_trigger[f"{lab['trigger']} {lab['result']}"] = got
    result.update(
        {
            "reconciles": int(reconciles),
            "reconciles_by_trigger_result": dict(sorted(by_trigger.items())),
            "reconcile_errors": int(delta(after, before, "infleet_operator_reconcile_errors_total")),
            "failed_handler_runs": op.failed_handlers(),
            "operator_api_requests": int(requests),
            "operator_api_requests_by_verb_kind": dict(sorted(by_kind.items())),
            "api_requests_per_reconcile": round(requests / max(reconciles, 1), 2),
            "api_requests_per_deployment": round(requests / count, 2),
            "mean_reconcile_ms": round(1000 * seconds / max(reconciles, 1), 1),
            "operator_cpu_seconds": round(cpu, 1),
            "operator_cpu_ms_per_deployment": round(1000 * cpu / count, 1),
            "operator_rss_mib": round(memory.get("VmRSS", 0) / 1024, 1),
            "operator_peak_rss_mib": round(max(memory.get("VmHWM", 0), op.peak_rss_kib) / 1024, 1),
            "apiserver_requests": apiserver_requests(server_after, server_before),
        }
    )
    # kopf's own writes (progress annotations) go through its client, not ours: the API server counts them
    idep_writes = sum(  # writes only: the garbage collector GETs owners, for one
        v for verb, v in result["apiserver_requests"].get("inferencedeployments", {}).items() if verb in WRITE_VERBS
    )
    ours = sum(v for k, v in by_kind.items() if k.endswith(api.KIND))
    kopf_writes = max(idep_writes - ours - count, 0)  # the benchmark's own POSTs are not the operator's
    result["kopf_api_requests_per_deployment"] = round(kopf_writes / count, 2)
    result["writes_per_deployment"] = writes_per_deployment(by_kind, kopf_writes, count)
    result["phases"] = phases(after, before, count)
    result["changes_per_object"] = changes  # from the watch: every write that changed an InferenceDeployment
    return result


def writes_per_deployment(by_kind: Mapping[str, int], kopf_writes: int, count: int) -> dict[str, float]:
    """API writes per deployment created: to the InferenceDeployment (the operator's status writes and kopf's own
    patches; the goal counts these) and the owned objects applied (a Deployment, a Service and a
    PodDisruptionBudget each), reported apart."""
    writes = {k: v for k, v in by_kind.items() if not k.startswith("GET")}
    status = sum(v for k, v in writes.items() if k.endswith(api.KIND))
    objects = sum(writes.values()) - status
    return {
        "inferencedeployment_status": round(status / count, 2),
        "inferencedeployment_kopf": round(kopf_writes / count, 2),
        "inferencedeployment_total": round((status + kopf_writes) / count, 2),
        "owned_objects": round(objects / count, 2),
    }


def mean(after: Samples, before: Samples, histogram: str, **match: str) -> float | None:
    n = delta(after, before, f"{histogram}_count", **match)
    return round(delta(after, before, f"{histogram}_sum", **match) / n, 3) if n else None


def phases(after: Samples, before: Samples, count: int) -> dict[str, Any]:
    """Where a deployment's time to its first status goes, from the operator's own histograms: kopf's dispatch
    (creation to the reconcile starting: the watch, kopf's queue and its own patching; the creation timestamp has
    1 s resolution), queueing for the owner's lock and a reconcile slot, then the reconcile's work, of which the
    API requests (waiting for a client connection, then the request itself)."""
    api_seconds = delta(after, before, "infleet_operator_api_request_seconds_sum")
    client_queue = delta(after, before, "infleet_operator_api_client_queue_seconds_sum")
    return {
        "dispatch_mean_seconds": mean(after, before, "infleet_operator_dispatch_seconds"),
        "reconcile_queue_mean_seconds": mean(after, before, "infleet_operator_reconcile_queue_seconds"),
        "reconcile_work_mean_seconds": mean(after, before, "infleet_operator_reconcile_duration_seconds"),
        "api_client_queue_seconds_per_deployment": round(client_queue / count, 3),
        "api_request_seconds_per_deployment": round(api_seconds / count, 3),
        "api_request_mean_seconds_by_verb": {
            verb: mean(after, before, "infleet_operator_api_request_seconds", verb=verb)
            for verb in ("GET", "PATCH", "POST", "DELETE")
            if delta(after, before, "infleet_operator_api_request_seconds_count", verb=verb)
        },
        "applies_skipped": int(delta(after, before, "infleet_operator_applies_skipped_total")),
        "status_writes_skipped": int(delta(after, before, "infleet_operator_status_writes_skipped_total")),
        "status_writes_per_deployment_by_manager": {
            dict(labels)["manager"]: round((value - before.get((name, labels), 0.0)) / count, 2)
            for (name, labels), value in sorted(after.items())
            if name == "infleet_operator_status_writes_total" and value - before.get((name, labels), 0.0)
        },
    }


WRITE_VERBS = ("POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION")


def run_resync(env: Mapping[str, str], namespace: str, count: int, log_dir: Path) -> dict[str, Any]:
    """A steady-state resync: a fresh operator over the settled fleet resumes (reconciles) every deployment. Every
    write the API server answers for the run's resources meanwhile is counted."""
    before = apiserver_metrics(env)
    started = time.monotonic()
    op = Operator(env, namespace, log_dir / f"operator-{count}-resync.log")
    try:
        wait_for(
            lambda: (
                total(operator_metrics(op.metrics_port), "infleet_operator_reconcile_total", trigger="resume") >= count
            ),
            timeout=1800,
            interval=2,
            what=f"{count} deployments resumed",
        )
        resumed = time.monotonic() - started
        time.sleep(status_writer.SETTLE + 5)  # trailing: replica refreshes after each resume, workload events
        mine = operator_metrics(op.metrics_port)
    finally:
        op.stop()
    server = apiserver_requests(apiserver_metrics(env), before)
    writes = {r: {v: n for v, n in verbs.items() if v in WRITE_VERBS} for r, verbs in server.items()}
    writes = {r: verbs for r, verbs in writes.items() if verbs}
    return {
        "resumed_seconds": round(resumed, 1),
        "reconciles": int(total(mine, "infleet_operator_reconcile_total", trigger="resume")),
        "applies_skipped": int(total(mine, "infleet_operator_applies_skipped_total")),
        "operator_write_requests": int(
            sum(total(mine, "infleet_operator_api_requests_total", verb=v) for v in ("POST", "PUT", "PATCH", "DELETE"))
        ),
        "apiserver_writes": writes,
        "apiserver_write_total": sum(n for verbs in writes.values() for n in verbs.values()),
    }


# ---- the whole benchmark ----------------------------------------------------------------------------------------


def fleet_up(env: Mapping[str, str], nodes: int) -> float:
    t = time.monotonic()
    status = subprocess.run([sys.executable, "-m", "infleet.cluster", "status"], env=dict(env), capture_output=True)
    if status.returncode:  # not (all) running: start from an empty store, not an earlier run's objects
        # a kept fleet runs without its unused components, which `status` reports: stop the rest before the wipe
        subprocess.run([sys.executable, "-m", "infleet.cluster", "down"], env=dict(env), capture_output=True)
        shutil.rmtree(Path(env["INFLEET_FLEET_DIR"]) / "etcd", ignore_errors=True)
    up = subprocess.run([sys.executable, "-m", "infleet.cluster", "up", "--nodes", str(nodes)], env=dict(env))
    if up.returncode:
        raise RuntimeError(f"infleet cluster up exited with {up.returncode}")
    core = client.CoreV1Api(config.new_client_from_config(env["KUBECONFIG"]))

    def all_ready() -> bool:
        items = core.list_node(label_selector="type=kwok").items
        ok = [n for n in items if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])]
        return len(ok) >= nodes

    wait_for(all_ready, timeout=900, interval=5, what=f"{nodes} Ready nodes")
    # KWOK fakes every pod here: the node agent (which runs infleet pods) and Prometheus only take memory, and a
    # machine short of memory slows etcd down until the API server stops accepting connections
    stop = "from infleet.cluster.controlplane import Fleet; f = Fleet(); [f.stop(c) for c in UNUSED]"
    subprocess.run([sys.executable, "-c", stop.replace("UNUSED", repr(UNUSED_COMPONENTS))], env=dict(env), check=True)
    return time.monotonic() - t


GOAL_RATIO = 1.3  # all Ready within 1.3x the plain Deployments' time (judged at 1,000)
GOAL_IDEP_WRITES = 2.0  # writes to each InferenceDeployment to create it
GOAL_RESYNC_WRITES = 0


def goals(entry: Mapping[str, Any]) -> dict[str, str]:
    """Each acceptance goal as 'met' or 'not met' (with the figure), or 'not measured'."""
    out: dict[str, str] = {}
    ratio = entry.get("ratio_all_ready")
    out["all_ready_ratio"] = (
        "not measured" if ratio is None else f"{'met' if ratio <= GOAL_RATIO else 'not met'}: {ratio}x <= {GOAL_RATIO}x"
    )
    writes = entry["operator"].get("writes_per_deployment", {}).get("inferencedeployment_total")
    out["inferencedeployment_writes"] = (
        "not measured"
        if writes is None
        else f"{'met' if writes <= GOAL_IDEP_WRITES else 'not met'}: {writes} <= {GOAL_IDEP_WRITES} per deployment"
    )
    resync = entry.get("resync", {}).get("apiserver_write_total")
    out["resync_writes"] = (
        "not measured"
        if resync is None
        else f"{'met' if resync <= GOAL_RESYNC_WRITES else 'not met'}: {resync} writes <= {GOAL_RESYNC_WRITES}"
    )
    return out


def table(runs: list[dict[str, Any]]) -> str:
    head = (
        f"{'N':>5} {'who':>9} {'all ready s':>11} {'p50 s':>7} {'p99 s':>7} {'req/deploy':>10} "
        f"{'req/reconcile':>13} {'peak RSS MiB':>12} {'CPU s':>6} {'errors':>6}"
    )
    lines = [head]
    for r in runs:
        for who in ("peer", "operator"):
            x = r.get(who)
            if not x:
                continue
            lines.append(
                f"{r['deployments']:>5} {'plain' if who == 'peer' else 'infleet':>9} "
                f"{x['all_ready_seconds']:>11}{'*' if x['timed_out'] else ' '}"
                f"{x['per_deployment_p50_seconds']:>7} {x['per_deployment_p99_seconds']:>7} "
                f"{x.get('api_requests_per_deployment', '-'):>10} {x.get('api_requests_per_reconcile', '-'):>13} "
                f"{x.get('operator_peak_rss_mib', '-'):>12} {x.get('operator_cpu_seconds', '-'):>6} "
                f"{x.get('reconcile_errors', '-'):>6}"
            )
        if r.get("ratio_all_ready") is not None:
            lines.append(f"{'':>5} {'ratio':>9} {r['ratio_all_ready']:>11}x (infleet all-Ready / plain all-available)")
        for goal, verdict in (r.get("goals") or {}).items():
            lines.append(f"{'':>5} {'goal':>9} {goal}: {verdict}")
    if any(x["timed_out"] for r in runs for x in (r.get("peer"), r.get("operator")) if x):
        lines.append("(* timed out: not all ready)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--port-base", type=int, default=18000, help="the fleet's ports (the shared fleet's is 16000)")
    parser.add_argument("--service-cidr", default="127.95.0.0/16", help="the fleet's Service network")
    parser.add_argument("--pod-cidr", default="10.246.0.0/16", help="the fleet's pod network")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/infleet-operator-scale"), help="the fleet's directory")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for one run's objects")
    parser.add_argument("--skip-peer", action="store_true", help="only the operator")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--keep", action="store_true", help="leave the fleet running afterwards")
    parser.add_argument("--profile", action="store_true", help="run the operator under py-spy (pip install py-spy)")
    parser.add_argument("--note", default="", help="recorded in the JSON: e.g. that the machine was shared")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    args.dir.mkdir(parents=True, exist_ok=True)
    env = fleet_env(args.dir, args.port_base, args.service_cidr, args.pod_cidr)
    print(f"== a fleet of {args.nodes} nodes in {args.dir} (ports {args.port_base}+)", flush=True)
    report: dict[str, Any] = {"nodes": args.nodes, "cpus": os.cpu_count(), "note": args.note, "runs": []}
    report["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    try:
        report["fleet_up_seconds"] = round(fleet_up(env, args.nodes), 1)
        print(f"   up and all nodes Ready in {report['fleet_up_seconds']}s", flush=True)
        kubectl(env, "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
        kubectl(env, "wait", "--for=condition=Established", "--timeout=120s", f"crd/{api.PLURAL}.{api.GROUP}")
        for count in args.counts:
            entry: dict[str, Any] = {"deployments": count}
            report["runs"].append(entry)
            if not args.skip_peer:
                print(f"== {count} plain Deployments (the peer)", flush=True)
                entry["peer"] = run_peer(env, count, args.timeout)
                print("   " + json.dumps(entry["peer"]), flush=True)
            print(f"== {count} InferenceDeployments", flush=True)
            entry["operator"] = run_operator(env, count, args.timeout, args.dir, args.profile)
            print("   " + json.dumps(entry["operator"]), flush=True)
            print(f"== a steady-state resync of the {count} (a restarted operator resumes them all)", flush=True)
            entry["resync"] = run_resync(env, entry["operator"]["namespace"], count, args.dir)
            print("   " + json.dumps(entry["resync"]), flush=True)
            if entry.get("peer") and not entry["peer"]["timed_out"] and not entry["operator"]["timed_out"]:
                entry["ratio_all_ready"] = round(
                    entry["operator"]["all_ready_seconds"] / max(entry["peer"]["all_ready_seconds"], 1e-9), 2
                )
            entry["goals"] = goals(entry)
    finally:
        if not args.keep:
            subprocess.run([sys.executable, "-m", "infleet.cluster", "down"], env=dict(env))
        path = args.out / "operator_scale.json"
        path.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(table(report["runs"]))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
