"""The local fleet's LeaderWorkerSet: the real controller (`sigs.k8s.io/lws`, built by build.py), its CRD from the
same module, and its admission webhooks served with a certificate the fleet's CA signed.

LWS's webhooks are not optional: the pod webhook gives every group pod its group and worker indexes and the
`LWS_*` variables, which the controller then relies on, and the LWS webhook defaults and validates the objects. In
a real cluster LWS makes its own certificates and serves the webhooks behind a Service. Here the controller is a
fleet process on loopback (like the object store), so LWS's internal certificate management is off, the webhook
server presents the fleet's 127.0.0.1 serving certificate (pki.py), and the webhook configurations send the API
server to `https://127.0.0.1:<port>` with the fleet CA as their caBundle. The pod webhooks only see pods that carry
LWS's set-name label, as in LWS's own manifests, so the rest of the fleet never waits on them.

On by `infleet cluster up --lws` (or INFLEET_FLEET_LWS=1), or for a test by `enable` on a running fleet; `disable`
takes it all away again (the CRD too, which is how a user removes LWS).
"""

from __future__ import annotations

import base64
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from infleet.cluster import build

if TYPE_CHECKING:
    from infleet.cluster.controlplane import Component, Fleet

ENV = build.LWS_ENV
NAME = "lws-controller"
CRD_NAME = "leaderworkersets.leaderworkerset.x-k8s.io"
WEBHOOK_NAME = "infleet-fleet-lws"  # both configurations

# (kind of configuration, webhook name, path, resource, operations), as LWS's config/webhook manifests declare them
WEBHOOKS = (
    (
        "Mutating",
        "mleaderworkerset.kb.io",
        "/mutate-leaderworkerset-x-k8s-io-v1-leaderworkerset",
        "lws",
        ["CREATE", "UPDATE"],
    ),
    ("Mutating", "mpod.kb.io", "/mutate--v1-pod", "pods", ["CREATE"]),
    (
        "Validating",
        "vleaderworkerset.kb.io",
        "/validate-leaderworkerset-x-k8s-io-v1-leaderworkerset",
        "lws",
        ["CREATE", "UPDATE"],
    ),
    ("Validating", "vpod.kb.io", "/validate--v1-pod", "pods", ["CREATE", "UPDATE"]),
)


def wanted() -> bool:
    return build.lws_wanted()


def directory(fleet: Fleet) -> Path:
    return fleet.dir / "lws"


def config_path(fleet: Fleet) -> Path:
    """Written by `enable`; while it exists the controller is one of the fleet's components (for status and down)."""
    return directory(fleet) / "config.yaml"


def write_config(fleet: Fleet) -> None:
    """LWS's own Configuration: no leader election (one process), no certificate rotation (the fleet's), the
    webhook and health ports from the fleet's base, metrics off."""
    certs = directory(fleet) / "certs"
    certs.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(fleet.pki.serving_cert, certs / "tls.crt")
    shutil.copyfile(fleet.pki.serving_key, certs / "tls.key")
    config = {
        "apiVersion": "config.lws.x-k8s.io/v1alpha1",
        "kind": "Configuration",
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "webhook": {"host": "127.0.0.1", "port": fleet.ports.lws_webhook, "certDir": str(certs)},
        "health": {"healthProbeBindAddress": f"127.0.0.1:{fleet.ports.lws_health}"},
        "metrics": {"bindAddress": "0"},
    }
    config_path(fleet).write_text(yaml.safe_dump(config, sort_keys=False))


def component(fleet: Fleet) -> Component:
    from infleet.cluster.controlplane import Component

    argv = [str(fleet.bins.lws), f"--config={config_path(fleet)}", "--zap-log-level=info"]
    return Component(NAME, argv, lambda: ready(fleet), env={"KUBECONFIG": str(fleet.kubeconfig)})


def ready(fleet: Fleet) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{fleet.ports.lws_health}/readyz", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def webhook_configurations(fleet: Fleet) -> list[dict[str, Any]]:
    ca = base64.b64encode(fleet.pki.ca_cert.read_bytes()).decode()
    out = []
    for kind in ("Mutating", "Validating"):
        hooks = []
        for hook_kind, name, path, resource, operations in WEBHOOKS:
            if hook_kind != kind:
                continue
            group, plural = ("leaderworkerset.x-k8s.io", "leaderworkersets") if resource == "lws" else ("", "pods")
            hook: dict[str, Any] = {
                "name": name,
                "admissionReviewVersions": ["v1"],
                "clientConfig": {"url": f"https://127.0.0.1:{fleet.ports.lws_webhook}{path}", "caBundle": ca},
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "rules": [
                    {"apiGroups": [group], "apiVersions": ["v1"], "operations": operations, "resources": [plural]}
                ],
            }
            if resource == "pods":
                selector = [{"key": "leaderworkerset.sigs.k8s.io/name", "operator": "Exists"}]
                hook["objectSelector"] = {"matchExpressions": selector}
            hooks.append(hook)
        out.append(
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": f"{kind}WebhookConfiguration",
                "metadata": {"name": WEBHOOK_NAME},
                "webhooks": hooks,
            }
        )
    return out


def _kubectl(fleet: Fleet, *args: str, input: str | None = None) -> None:
    from infleet.cluster.testing import kubectl

    kubectl(fleet.kubeconfig, *args, input=input)


def install_crd(fleet: Fleet, timeout: float = 60) -> None:
    """Apply the CRD and wait until it is Established (polled: `kubectl wait` fails on a status not yet written)."""
    from kubernetes import client, config

    _kubectl(fleet, "apply", "--server-side", "--force-conflicts", "-f", str(fleet.bins.lws_crd))
    ext = client.ApiextensionsV1Api(config.new_client_from_config(str(fleet.kubeconfig)))
    deadline = time.monotonic() + timeout
    while not any(
        c.type == "Established" and c.status == "True"
        for c in (ext.read_custom_resource_definition(CRD_NAME).status.conditions or [])
    ):
        if time.monotonic() > deadline:
            raise RuntimeError(f"CRD {CRD_NAME} not established after {timeout:.0f}s")
        time.sleep(0.2)


def enable(fleet: Fleet) -> None:
    """The CRD, the controller and its webhooks, on a running fleet; a no-op where they are already there."""
    started = time.monotonic()
    write_config(fleet)
    install_crd(fleet)  # the controller needs its kind served to start
    # the webhooks before the controller: no LWS pod may ever be created without the pod webhook's indexes (until
    # the controller answers, such requests fail and their creators retry)
    webhooks = yaml.safe_dump_all(webhook_configurations(fleet))
    _kubectl(fleet, "apply", "--server-side", "--force-conflicts", "-f", "-", input=webhooks)
    fleet.start(component(fleet))
    print(f"  {NAME:<24} ready in {time.monotonic() - started:.1f}s", flush=True)


def disable(fleet: Fleet) -> None:
    """Remove LWS as a user would: the webhooks, the CRD (and so every LeaderWorkerSet), then the controller."""
    for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
        _kubectl(fleet, "delete", kind, WEBHOOK_NAME, "--ignore-not-found")
    _kubectl(fleet, "delete", "crd", CRD_NAME, "--ignore-not-found", "--wait=true", "--timeout=120s")
    fleet.stop(NAME)
    config_path(fleet).unlink(missing_ok=True)
