"""`infleet operator run [--namespace NS | --all-namespaces] [--metrics-port N] [--health-port N]`, and
`infleet operator uninstall-check` (the chart's pre-delete hook, uninstall.py).

Runs kopf in-process (no `kopf run` subprocess): handlers come from `handlers.py`, `lws.py`, `autoscaling.py`,
`adapters.py` and `observation.py` (status for every deployment from one Prometheus query per interval). With
`--peering` (leader election, for several replicas) the live replica with the highest priority handles objects while
the others stand by; without kopf's peering CRDs installed it falls back to standalone mode with a warning. A replica
that dies without notice holds the others off for the peering lifetime (15 s). The default priority is seniority
(`seniority_priority`): a replica that (re)starts never preempts the one already working, so a crash hands the work
to the standby, and a restarted process (the same pod: the chart sets kopf's POD_ID, so it takes its own old place
in the peering object rather than waiting out its own ghost) becomes the new standby.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time
from typing import Any

import kopf
from prometheus_client import start_http_server

from infleet.operator import kopf_storage, uninstall
from infleet.operator.kube import Kube, KubeError
from infleet.operator.state import OperatorState

PEERING_NAME = "infleet-operator"


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: OperatorState, logger: kopf.Logger, **_: Any) -> None:
    # the last handled spec is status.observedGeneration, progress of retried handlers goes to annotations under
    # our prefix: kopf writes nothing to an object whose handlers succeed (kopf_storage.py)
    settings.persistence.progress_storage, settings.persistence.diffbase_storage = kopf_storage.storages()
    settings.persistence.finalizer = "infleet.dev/operator"  # on objects the autoscaler timer serves (kopf needs it)
    settings.posting.level = logging.WARNING  # events for problems only, not for every successful handler
    settings.posting.reporting_component = "infleet-operator"
    settings.networking.error_backoffs = [1, 2, 4, 8, 16, 30, 60]
    settings.batching.error_delays = [1, 2, 4, 8, 16, 30, 60]
    settings.watching.server_timeout = 300
    settings.peering.name = PEERING_NAME
    # a replica that dies without saying goodbye blocks the others for this long (kopf's default is 60 s)
    settings.peering.lifetime = 15
    memo.kube = Kube.from_environment(os.environ.get("KUBECONFIG"))
    from infleet.operator import lws

    await lws.discover(memo.kube, memo)  # before any reconcile: groups render as LWS or StatefulSets
    if not settings.peering.standalone:
        settings.peering.standalone = not await ensure_peering(memo.kube, memo.namespaces, logger)
    # the operator-wide loops (kopf's daemons are per object): every deployment's status from one query per
    # interval, and the bytes of models being downloaded
    from infleet.operator import model_status, observation

    memo.start_loop("observation", observation.INTERVAL, observation.tick)
    memo.start_loop("model progress", model_status.PROGRESS_INTERVAL, model_status.report_progress)


async def ensure_peering(kube: Kube, namespaces: list[str], logger: kopf.Logger) -> bool:
    """Create the peering object(s) replicas elect through; False when kopf's peering CRDs are not installed."""
    plural = "kopfpeerings" if namespaces else "clusterkopfpeerings"
    kind = "KopfPeering" if namespaces else "ClusterKopfPeering"
    targets: list[str | None] = list(namespaces) or [None]
    for ns in targets:
        where = f"/namespaces/{ns}" if ns else ""
        body = {"apiVersion": "kopf.dev/v1", "kind": kind, "metadata": {"name": PEERING_NAME}}
        try:
            await kube.request("POST", f"/apis/kopf.dev/v1{where}/{plural}", kind=kind, body=body)
        except KubeError as err:
            if err.status == 404:
                logger.warning("kopf peering CRDs are not installed (crds/kopf-peering.yaml): running standalone")
                return False
            if err.status != 409:  # 409: it exists already
                raise
    return True


@kopf.on.cleanup()
async def close(memo: OperatorState, **_: Any) -> None:
    await memo.stop_loops()
    if memo.kube is not None:
        await memo.kube.close()


def seniority_priority(now: float | None = None) -> int:
    """Earlier starts rank higher: minus the start time in milliseconds, with a random last three digits so two
    replicas started in the same millisecond do not tie (kopf pauses every replica of a tied priority)."""
    started_ms = int((time.time() if now is None else now) * 1000)
    return -(started_ms * 1000 + random.randint(0, 999))


class QuietWatchers(logging.Filter):
    """Drop kopf's "Handler ... succeeded" lines for the watch handlers that run on every node/pod/workload event."""

    NOISY = (
        "fleet-changed",
        "volume-appeared",
        "restart-group",
        "label_rank",
        "workload_event",
        "deployment-gauges",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (record.levelno <= logging.INFO and "succeeded" in message and any(n in message for n in self.NOISY))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infleet operator", description="Run the InferenceDeployment operator.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the operator against the current kubeconfig")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", help="watch this namespace (repeatable)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (the default)")
    run.add_argument("--metrics-port", type=int, default=8081, help="Prometheus metrics port (0: off)")
    run.add_argument("--health-port", type=int, default=8080, help="port of /healthz (0: off)")
    run.add_argument(
        "--priority",
        type=int,
        default=None,
        help="peering priority: the highest live replica works, the others stand by (default: seniority, the "
        "longest-running replica works)",
    )
    run.add_argument(
        "--peering",
        action="store_true",
        help="leader election through kopf peering, for several replicas (one works, the others stand by)",
    )
    run.add_argument("--prometheus-url", help="where the autoscaler reads latency and queue metrics")
    run.add_argument(
        "--replica-device",
        help="the device whose measured tier profile describes the runtime replicas (e.g. cpu, on a fleet whose GPU "
        "nodes are simulated and run every pod on the CPU); default: each deployment's accelerator type",
    )
    run.add_argument("--verbose", "-v", action="store_true")
    uninstall.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "uninstall-check":
        return uninstall.run(args)

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if not args.verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per API request is noise, and costs CPU
        for handler in logging.getLogger().handlers:
            handler.addFilter(QuietWatchers())
    # the handlers register themselves with kopf when imported
    from infleet.operator import (  # noqa: F401
        adapters,
        autoscaling,
        deployment_metrics,
        handlers,
        lws,
        model_status,
        observation,
    )

    namespaces = args.namespace or []
    state = OperatorState(namespaces=namespaces, replica_device=args.replica_device or None)
    if args.prometheus_url:
        state.reader = observation.FleetReader(args.prometheus_url)
        state.observer = autoscaling.prometheus_observer(state.reader)
    if args.metrics_port:
        start_http_server(args.metrics_port)
    liveness = f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness,
        standalone=not args.peering,
        priority=args.priority if args.priority is not None else seniority_priority(),
        memo=state,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
