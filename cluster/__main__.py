"""`infleet cluster up | down | status | env`: the local fleet on loopback."""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

from kubernetes import client, config

from infleet.cluster import build, containers, lws
from infleet.cluster.agent import kill_leftovers
from infleet.cluster.controlplane import Fleet
from infleet.cluster.nodes import DEFAULT_FLEET, apply_fleet, load_fleet

GATEWAY_SELECTOR = "app.kubernetes.io/name=infleet-gateway,app.kubernetes.io/component=gateway"


def env_lines(fleet: Fleet) -> list[str]:
    bins = build.binaries()
    path = f"{bins.kubectl.parent}:{bins.helm.parent}:{os.environ.get('PATH', '')}"
    return [f"export KUBECONFIG={fleet.kubeconfig}", f"export PATH={path}"]


def gateway_url(fleet: Fleet, timeout: float = 3.0) -> str | None:
    """The chart's gateway Service address when the fleet runs one and this machine reaches it (the local fleet
    routes the service network to loopback); None otherwise, so `env` still prints the rest."""
    try:
        core = client.CoreV1Api(config.new_client_from_config(str(fleet.kubeconfig)))
        services = core.list_service_for_all_namespaces(label_selector=GATEWAY_SELECTOR, _request_timeout=timeout)
    except Exception:  # no fleet, no kubeconfig, API server down: nothing to point at
        return None
    for service in services.items:
        host, port = service.spec.cluster_ip, service.spec.ports[0].port
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return f"http://{host}:{port}"
        except OSError:
            continue
    return None


def wait_for_default_service_account(core: client.CoreV1Api, timeout: float = 60) -> None:
    """Pods cannot be created before the controller-manager made the namespace's default ServiceAccount."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if core.list_namespaced_service_account("default", field_selector="metadata.name=default").items:
            return
        time.sleep(0.2)
    raise RuntimeError("the default ServiceAccount did not appear; is kube-controller-manager running?")


def up(fleet_file: Path, nodes: int | None, pods: str | None = None, with_lws: bool = False) -> int:
    """`pods`: how the node agent runs pods (containers.MODES); None keeps INFLEET_PODS (default: processes).
    `with_lws`: build (once) and run LeaderWorkerSet's controller too (lws.py)."""
    started = time.monotonic()
    if pods is not None:
        os.environ[containers.MODE_ENV] = pods  # the node agent, started below, inherits it
    if with_lws:
        os.environ[lws.ENV] = "1"
    build.ensure_all()
    built = time.monotonic()
    fleet = Fleet()
    print(f"infleet: starting the local fleet in {fleet.dir}", flush=True)
    fleet.up()
    api = config.new_client_from_config(str(fleet.kubeconfig))
    core = client.CoreV1Api(api)
    wait_for_default_service_account(core)
    t = time.monotonic()
    count = apply_fleet(core, load_fleet(fleet_file, nodes), kubelet_port=fleet.ports.kwok)
    print(f"  {count} simulated GPU nodes ready in {time.monotonic() - t:.1f}s", flush=True)
    print(
        f"infleet: fleet up in {time.monotonic() - started:.1f}s "
        f"(binaries {built - started:.1f}s, control plane and nodes {time.monotonic() - built:.1f}s)"
    )
    print("\n".join(env_lines(fleet)))
    return 0


def down() -> int:
    fleet = Fleet()
    fleet.down()
    kill_leftovers(fleet.dir / "pods")
    print("infleet: local fleet stopped")
    return 0


def status() -> int:
    fleet = Fleet()
    states = fleet.status()
    for name, state in states.items():
        print(f"{name:<24} {state}")
    return 0 if all(s == "running" for s in states.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infleet cluster", description="the local fleet on loopback")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="build (once), start the control plane, KWOK, the node agent and GPU nodes")
    p_up.add_argument("--fleet", type=Path, default=DEFAULT_FLEET, help="fleet file (node pools)")
    p_up.add_argument("--nodes", type=int, default=None, help="total node count, pools scaled in proportion")
    p_up.add_argument(
        "--pods",
        choices=containers.MODES,
        default=os.environ.get(containers.MODE_ENV, "processes"),
        help="run pods of infleet's images as host processes (fast, the default) or as podman containers of the "
        "images `make images` built",
    )
    p_up.add_argument(
        "--lws",
        action="store_true",
        default=lws.wanted(),
        help=f"also run the LeaderWorkerSet controller, its CRD and webhooks (built once; or {lws.ENV}=1)",
    )
    sub.add_parser("down", help="stop every process the fleet started")
    sub.add_parser("status", help="each component's state; exit 1 if any is not running")
    sub.add_parser("env", help="print the KUBECONFIG, PATH and INFLEET_URL (the gateway) export lines")
    args = parser.parse_args(argv)
    if args.command == "up":
        return up(args.fleet, args.nodes, args.pods, args.lws)
    if args.command == "down":
        return down()
    if args.command == "status":
        return status()
    fleet = Fleet()
    print("\n".join(env_lines(fleet)))
    url = gateway_url(fleet)
    if url:
        print(f"export INFLEET_URL={url}")
    else:
        print("# no reachable infleet gateway: INFLEET_URL not set (run `make up` first)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
