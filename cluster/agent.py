"""The node agent: the local fleet's stand-in for kubelet and kube-proxy.

It watches scheduled pods, hands pods of infleet's own images to a `PodRunner` each (real processes), and
runs the Service proxy. On start it stops processes a previous agent left behind, so a restarted agent
starts clean rather than adopting processes whose probes and restarts nobody watched.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import signal
import sys
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from infleet.cluster import containers
from infleet.cluster.controlplane import Ports
from infleet.cluster.discovery import pod_target_groups, resolve
from infleet.cluster.launcher import IpPool, PodRunner, is_launched
from infleet.cluster.network import PodNetwork
from infleet.cluster.proxy import ServiceProxy


def kill_leftovers(pods_dir: Path) -> None:
    for pid_file in pods_dir.glob("*/*.pid"):
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError, PermissionError):
            pass
        pid_file.unlink(missing_ok=True)
    containers.remove_leftovers(pods_dir)


class Agent:
    def __init__(self, fleet_dir: Path, network: PodNetwork, port: int) -> None:
        kubeconfig = fleet_dir / "kubeconfig"
        self.api = config.new_client_from_config(str(kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.network = network
        # Pods reach the API server through the host end of the pod network (see `forward` in main).
        self.server = f"https://{network.host_ip}:{urlparse(self.api.configuration.host).port}"
        self.ca = fleet_dir / "pki" / "ca.crt"
        self.pods_dir = fleet_dir / "pods"
        self.pods_dir.mkdir(parents=True, exist_ok=True)
        self.ips = IpPool(network)
        self.dns = f"http://{network.host_ip}:{port}/dns"
        self.runners: dict[str, PodRunner] = {}
        self.pods: dict[str, client.V1Pod] = {}  # every scheduled pod, for service discovery
        self.lock = threading.Lock()

    def _on_pod(self, kind: str, pod: client.V1Pod) -> None:
        uid = pod.metadata.uid
        runner = self.runners.get(uid)
        if kind == "DELETED":
            if runner is not None:
                runner.stop(0)
            return
        if pod.metadata.deletion_timestamp is not None:
            if runner is not None and not runner.stopping.is_set():
                grace = pod.metadata.deletion_grace_period_seconds
                runner.stop(float(grace) if grace is not None else None)
                threading.Thread(target=self._finish_delete, args=(runner, pod), daemon=True).start()
            elif runner is None:
                self._force_delete(pod)
            return
        if runner is None and pod.status.phase not in ("Succeeded", "Failed"):
            ip = pod.status.pod_ip
            if ip:
                self.ips.claim(ip)
                self.network.add_ip(ip)
            else:
                ip = self.ips.allocate()
            runner = PodRunner(
                self.core, pod, ip, self.pods_dir, self.server, self.ca, self.network.exec_prefix(), self.dns
            )
            self.runners[uid] = runner
            runner.start()

    def _finish_delete(self, runner: PodRunner, pod: client.V1Pod) -> None:
        runner.stopped.wait()
        self._force_delete(pod)

    def _force_delete(self, pod: client.V1Pod) -> None:
        try:
            self.core.delete_namespaced_pod(
                pod.metadata.name,
                pod.metadata.namespace,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=pod.metadata.uid)
                ),
            )
        except ApiException as err:
            if err.status not in (404, 409):
                raise

    def watch_pods(self) -> None:
        while True:
            try:
                stream = watch.Watch().stream(
                    self.core.list_pod_for_all_namespaces, field_selector="spec.nodeName!=", timeout_seconds=300
                )
                for event in stream:
                    pod = event["object"]
                    if event["type"] == "DELETED":
                        self.pods.pop(pod.metadata.uid, None)
                    else:
                        self.pods[pod.metadata.uid] = pod
                    if is_launched(pod):
                        try:
                            with self.lock:
                                self._on_pod(event["type"], pod)
                        except Exception as err:  # one pod's trouble must not stop the others
                            meta = pod.metadata
                            sys.stderr.write(f"agent: pod {meta.namespace}/{meta.name}: {err!r}\n")
            except Exception as err:  # dropped watches restart, as informers do
                sys.stderr.write(f"agent: pod watch restarted after {err!r}\n")
                threading.Event().wait(1)

    def shutdown(self) -> None:
        for runner in list(self.runners.values()):
            runner.stop()
        for runner in list(self.runners.values()):
            runner.stopped.wait(timeout=runner.grace + 10)


def http_handler(agent: Agent) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        """`/healthz`; `/sd/pods`, Prometheus HTTP service discovery; `/dns?name=N&namespace=NS`, cluster DNS for
        launched pods (see discovery.py)."""

        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path == "/healthz":
                body = b"ok\n"
            elif url.path == "/sd/pods":
                body = json.dumps([g for pod in list(agent.pods.values()) for g in pod_target_groups(pod)]).encode()
            elif url.path == "/dns":
                query = parse_qs(url.query)
                name, namespace = query.get("name", [""])[0], query.get("namespace", ["default"])[0]
                body = json.dumps(resolve(agent.core, list(agent.pods.values()), name, namespace)).encode()
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infleet-node-agent")
    parser.add_argument("--fleet-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--port-base", type=int, required=True)
    args = parser.parse_args(argv)
    kill_leftovers(args.fleet_dir / "pods")
    (args.fleet_dir / "pods-mode").write_text(containers.mode())  # how this fleet runs pods, for tests and docs
    agent = Agent(args.fleet_dir, PodNetwork.from_env(args.port_base), args.port)
    proxy = ServiceProxy(agent.api)
    proxy.start()
    # Pods reach the fleet's own loopback services (API server, Prometheus) at the pod network's host address.
    ports = Ports(args.port_base)
    for port in (ports.apiserver, ports.prometheus):
        proxy.forward((str(agent.network.host_ip), port), ("127.0.0.1", port))
    threading.Thread(target=agent.watch_pods, daemon=True, name="pod-watch").start()
    # On loopback for the host, and on the pod network's host address for pods (their DNS questions).
    for address in ("127.0.0.1", str(agent.network.host_ip)):
        server = http.server.ThreadingHTTPServer((address, args.port), http_handler(agent))
        threading.Thread(target=server.serve_forever, daemon=True).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    agent.shutdown()
    kill_leftovers(args.fleet_dir / "pods")
    return 0


if __name__ == "__main__":
    sys.exit(main())
