"""`infleet operator uninstall-check`: the chart's pre-delete hook, so that `helm uninstall` never strands objects.

Every InferenceDeployment may carry the operator's finalizer, which only a running operator removes. Uninstalling
the operator first would leave each of them, and its namespace, deleting forever. So while any exist the hook
refuses (exit 3, with a message saying what to do); with `--delete-deployments` it deletes them while the operator
still runs and waits until they are gone, and only then lets helm remove the operator.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from infleet.operator import api
from infleet.operator.kube import Kube, KubeError

REFUSED = 3  # exit status: InferenceDeployments exist and the flag was not given
STUCK = 4  # exit status: they were deleted but did not go within the timeout
POLL_SECONDS = 2.0


def names(items: list[dict[str, Any]]) -> list[str]:
    return sorted(f"{i['metadata']['namespace']}/{i['metadata']['name']}" for i in items)


async def existing(kube: Kube, namespaces: list[str]) -> list[dict[str, Any]]:
    """The InferenceDeployments in the watched namespaces (all of them when none are named)."""
    found: list[dict[str, Any]] = []
    for ns in namespaces or [None]:  # type: ignore[list-item]  # None: every namespace
        found += await kube.list(api.KIND, ns)
    return found


def refusal(found: list[dict[str, Any]], release: str, namespace: str, revision: int) -> str:
    shown = ", ".join(names(found)[:10]) + (f" and {len(found) - 10} more" if len(found) > 10 else "")
    return (
        f"refusing to uninstall infleet: {len(found)} InferenceDeployment(s) exist ({shown}). Each may carry the "
        "operator's finalizer (infleet.dev/operator), which only a running operator removes: without it they, and "
        "their namespaces, would stay deleting forever.\n"
        "Either delete them first:\n"
        "  kubectl delete inferencedeployments --all --all-namespaces\n"
        "or let the uninstall delete them while the operator still runs (nothing was removed, but helm now lists the "
        "release as uninstalling: a rollback to its own revision restores it, and the upgrade sets the flag):\n"
        f"  helm rollback {release} {revision} -n {namespace}\n"
        f"  helm upgrade {release} <chart> -n {namespace} --reuse-values --set uninstall.deleteDeployments=true\n"
        f"  helm uninstall {release} -n {namespace}"
    )


async def check(
    namespaces: list[str], delete: bool, timeout: float, release: str, namespace: str, revision: int
) -> int:
    kube = Kube.from_environment()
    try:
        found = await existing(kube, namespaces)
        if not found:
            print("no InferenceDeployments left: uninstalling")
            return 0
        # ones already being deleted need the operator to finish: wait for them, never refuse because of them
        standing = [i for i in found if not i["metadata"].get("deletionTimestamp")]
        if standing and not delete:
            print(refusal(standing, release, namespace, revision), file=sys.stderr)
            return REFUSED
        if standing:
            print(
                f"deleting {len(standing)} InferenceDeployment(s) while the operator still runs: "
                f"{', '.join(names(standing))}"
            )
        for item in standing:
            meta = item["metadata"]
            await kube.delete(api.KIND, meta["namespace"], meta["name"], uid=meta.get("uid"))
        deadline = time.monotonic() + timeout
        while found := await existing(kube, namespaces):
            if time.monotonic() > deadline:
                stuck = sorted(
                    f"{i['metadata']['namespace']}/{i['metadata']['name']} (finalizers "
                    f"{i['metadata'].get('finalizers') or []})"
                    for i in found
                )
                print(
                    f"after {timeout:.0f}s these InferenceDeployments are still there: {'; '.join(stuck)}. Is the "
                    f"operator running? (kubectl get pods -n {namespace})",
                    file=sys.stderr,
                )
                return STUCK
            await asyncio.sleep(POLL_SECONDS)
        print("every InferenceDeployment is gone: uninstalling")
        return 0
    except KubeError as err:
        print(f"cannot check for InferenceDeployments: {err}", file=sys.stderr)
        return 1
    finally:
        await kube.close()


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("uninstall-check", help="the chart's pre-delete hook: refuse while InferenceDeployments exist")
    p.add_argument("--namespace", "-n", action="append", default=[], help="a watched namespace (default: all)")
    p.add_argument("--delete-deployments", action="store_true", help="delete them and wait until they are gone")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds to wait for them to go")
    p.add_argument("--release", default="infleet", help="the helm release, for the message")
    p.add_argument("--release-namespace", default="infleet-system", help="its namespace, for the message")
    p.add_argument("--revision", type=int, default=1, help="its revision, for the message")


def run(args: argparse.Namespace) -> int:
    return asyncio.run(
        check(
            args.namespace, args.delete_deployments, args.timeout, args.release, args.release_namespace, args.revision
        )
    )
