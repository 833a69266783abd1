"""`infleet gateway run [--port 8080] [--namespace NS ...]` (also `python -m infleet.gateway run ...`).

In a cluster the gateway discovers InferenceDeployments through the Kubernetes API (in-cluster config, else
KUBECONFIG or --kubeconfig). `--upstream model=http://host:port,...` serves fixed replicas instead, with no
Kubernetes at all (local runs, tests, benchmarks).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from infleet.gateway.activator import HoldPolicy
from infleet.gateway.app import Gateway, build_app
from infleet.gateway.auth import KeyStore
from infleet.gateway.catalog import LEAST_OUTSTANDING, STRATEGIES
from infleet.gateway.fleet_spend import follow_fleet_spend
from infleet.gateway.peers import follow_peers
from infleet.gateway.peers import split as split_peer
from infleet.gateway.retries import DEFAULT_FLOOR, DEFAULT_RATIO
from infleet.gateway.routing import DEFAULT_EPS, DEFAULT_PREFIX_CHARS, Router
from infleet.gateway.teams import TeamError, Teams

PROG = "infleet gateway"
log = logging.getLogger("infleet.gateway")
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="the fleet's OpenAI and KServe v2 entrypoint")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="serve HTTP in front of every reachable InferenceDeployment")
    r.add_argument("--host", default="0.0.0.0")
    r.add_argument("--port", type=int, default=8080)
    r.add_argument("--namespace", action="append", default=[], metavar="NS", help="watch only NS (repeatable)")
    r.add_argument("--kubeconfig", help="outside a cluster: the kubeconfig (default: KUBECONFIG or ~/.kube/config)")
    r.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="[NS/]MODEL=URL[,URL...]",
        help="serve fixed replicas instead of discovering them (repeatable; no Kubernetes)",
    )
    r.add_argument("--routing", choices=STRATEGIES, default=LEAST_OUTSTANDING, help="strategy for --upstream models")
    r.add_argument("--api-keys-file", type=Path, help="YAML mapping API key -> namespaces ('*' for all)")
    r.add_argument(
        "--api-key-secrets",
        action="store_true",
        help="require API keys, read from Secrets labelled infleet.dev/api-keys=true in --secrets-namespace",
    )
    r.add_argument("--secrets-namespace", help="where API-key Secrets live (default: the gateway's own namespace)")
    r.add_argument("--max-held", type=int, default=64, metavar="N", help="requests held per deployment at zero")
    r.add_argument("--hold-timeout", type=float, default=300.0, metavar="S", help="longest hold for a replica")
    r.add_argument("--retry-after", type=int, default=10, metavar="S", help="Retry-After when turning a request away")
    r.add_argument("--prefix-chars", type=int, default=DEFAULT_PREFIX_CHARS, metavar="N", help="prefix-affinity key")
    r.add_argument(
        "--no-kv-routing",
        dest="kv_routing",
        action="store_false",
        help="prefix affinity hashes the prompt's first characters only, even where replicas publish their cache",
    )
    r.add_argument("--load-bound", type=float, default=DEFAULT_EPS, metavar="EPS", help="prefix affinity: (1+EPS)")
    r.add_argument(
        "--retry-budget",
        type=float,
        default=DEFAULT_RATIO,
        metavar="RATIO",
        help="retries before the first byte may add this share of the requests (0 with --retry-floor 0: none)",
    )
    r.add_argument("--retry-floor", type=float, default=DEFAULT_FLOOR, metavar="N", help="retries/s always allowed")
    r.add_argument(
        "--teams-file",
        type=Path,
        help="YAML of teams: their API keys and namespaces, token rate limits and monthly budgets (re-read when it "
        "changes; docs/cost-controls.md)",
    )
    r.add_argument(
        "--prometheus-url",
        help="with --teams-file: read every gateway replica's month-to-date spend from this Prometheus, so budgets "
        "are checked against the fleet's spend (default: this replica's own)",
    )
    r.add_argument(
        "--peers",
        action="append",
        default=[],
        metavar="NAME:PORT",
        help="with --teams-file: the other gateway replicas (a headless Service's name resolves to each): their "
        "charged tokens count against this replica's token limits too, so a limit is the fleet's (repeatable)",
    )
    r.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    r.add_argument("--access-log", action="store_true")
    return p


def own_namespace() -> str:
    if SA_NAMESPACE_FILE.exists():
        return SA_NAMESPACE_FILE.read_text().strip()
    return os.environ.get("POD_NAMESPACE", "default")


def follow_teams(gateway: Gateway, path: Path | None, every: float = 10.0) -> Callable[[], None]:
    """Start (from the app's start-up, on its loop) a thread that re-reads the teams file when its bytes change (a
    mounted Secret changes under the pod) and hands the new teams to the loop; an unusable file keeps the old."""

    def start() -> None:
        if path is None:
            return
        loop = asyncio.get_running_loop()

        def watch() -> None:
            seen = path.read_bytes() if path.exists() else b""
            while True:
                time.sleep(every)
                try:
                    data = path.read_bytes()
                    if data == seen:
                        continue
                    seen = data
                    teams = Teams.load(path)
                except (OSError, TeamError) as e:
                    log.error("teams file not reloaded, the previous teams stay: %s", e)
                    continue
                loop.call_soon_threadsafe(gateway.budgets.set_teams, teams)
                log.info("teams reloaded from %s: %s", path, teams)

        threading.Thread(target=watch, name="infleet-gateway-teams", daemon=True).start()

    return start


def followers(gateway: Gateway, args: argparse.Namespace) -> Callable[[], None]:
    """What runs beside the server once it starts: the teams file's reloads, the fleet's spend and the peers' tokens."""
    teams = follow_teams(gateway, args.teams_file)
    spend = follow_fleet_spend(gateway.budgets, args.prometheus_url if args.teams_file else None)
    tokens = follow_peers(gateway.budgets, args.peers if args.teams_file else [], gateway.replica)

    def start() -> None:
        teams()
        spend()
        tokens()

    return start


def run(args: argparse.Namespace) -> int:
    for flag in ("port", "max_held", "prefix_chars"):
        if getattr(args, flag) < 1:
            print(f"{PROG}: --{flag.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    for peer in args.peers:
        try:
            split_peer(peer)
        except ValueError as e:
            print(f"{PROG}: --peers {e}", file=sys.stderr)
            return 2
    if args.hold_timeout <= 0 or args.load_bound <= 0 or min(args.retry_after, args.retry_budget, args.retry_floor) < 0:
        print(
            f"{PROG}: --hold-timeout and --load-bound must be positive, --retry-after, --retry-budget and "
            "--retry-floor not negative",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    keys = KeyStore(enabled=bool(args.api_keys_file or args.api_key_secrets))
    if args.api_keys_file:
        try:
            keys.load_file(args.api_keys_file)
        except (OSError, ValueError) as e:
            print(f"{PROG}: cannot read API keys: {e}", file=sys.stderr)
            return 1
    teams = None
    if args.teams_file:
        try:
            teams = Teams.load(args.teams_file)
        except TeamError as e:
            print(f"{PROG}: cannot read teams: {e}", file=sys.stderr)
            return 1
    router = Router(eps=args.load_bound, prefix_chars=args.prefix_chars)
    hold = HoldPolicy(max_held=args.max_held, timeout=args.hold_timeout, retry_after=args.retry_after)
    retries: dict[str, Any] = {"retry_ratio": args.retry_budget, "retry_floor": args.retry_floor, "teams": teams}

    if args.upstream:
        from infleet.gateway.discovery import load_static

        gateway = Gateway(keys=keys, router=router, hold=hold, kv_routing=args.kv_routing, **retries)
        try:
            load_static(gateway.catalog, args.upstream, args.routing)
        except ValueError as e:
            print(f"{PROG}: {e}", file=sys.stderr)
            return 2
        app = build_app(gateway, on_start=followers(gateway, args))
    else:
        from kubernetes import client, config

        from infleet.gateway.discovery import AnnotationDemand, KubernetesDiscovery

        try:
            # a KUBECONFIG in the environment wins (the local launcher hands pods their token that way)
            if os.environ.get("KUBERNETES_SERVICE_HOST") and not (args.kubeconfig or os.environ.get("KUBECONFIG")):
                config.load_incluster_config()
            else:
                config.load_kube_config(config_file=args.kubeconfig)
        except Exception as e:
            print(f"{PROG}: no Kubernetes configuration ({e}); give --kubeconfig, or --upstream", file=sys.stderr)
            return 1
        api = client.ApiClient()
        gateway = Gateway(
            keys=keys,
            router=router,
            hold=hold,
            record_demand=AnnotationDemand(api),
            kv_routing=args.kv_routing,
            **retries,
        )
        discovery = KubernetesDiscovery(
            api,
            gateway.catalog,
            args.namespace or None,
            keys if args.api_key_secrets else None,
            args.secrets_namespace or own_namespace(),
        )
        gateway.ready = discovery.synced.is_set
        follow = followers(gateway, args)

        def start() -> None:
            discovery.start()
            follow()

        app = build_app(gateway, on_start=start, on_stop=discovery.stop)

    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "run":
        return run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
