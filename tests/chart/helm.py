"""Rendering the chart with the project's helm binary, and reading the rendered objects."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from infleet.cluster.build import binaries

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "infleet"
RELEASE = "test"
# `helm template` assumes Kubernetes 1.20 offline, older than the chart's kubeVersion: render for the local fleet's
KUBE_VERSION = "1.37.0"


def helm(*args: str, kubeconfig: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cmd = [str(binaries().helm), *args]
    if kubeconfig is not None:
        cmd.append(f"--kubeconfig={kubeconfig}")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def set_args(values: dict[str, Any] | None) -> list[str]:
    """`--set-json` for each top-level key: exact types, no helm string parsing surprises."""
    import json

    return [arg for key, value in (values or {}).items() for arg in ("--set-json", f"{key}={json.dumps(value)}")]


def render(
    values: dict[str, Any] | None = None, *extra: str, namespace: str = "infleet-system"
) -> list[dict[str, Any]]:
    args = ("--kube-version", KUBE_VERSION, *extra) if "--kube-version" not in extra else extra
    proc = helm("template", RELEASE, str(CHART), "--namespace", namespace, *set_args(values), *args)
    if proc.returncode != 0:
        raise AssertionError(f"helm template failed:\n{proc.stderr}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def of_kind(docs: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: Iterable[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"expected one {kind} named *{suffix}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


# (role kind, apiGroup, resource, verb): one permission of a rendered ClusterRole or Role
Permission = tuple[str, str, str, str]


def permissions(rules: list[dict[str, Any]], kind: str) -> list[Permission]:
    return [
        (kind, group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    ]


def without(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> list[dict[str, Any]]:
    """The rules less one (group, resource, verb); a rule is split so nothing else is lost."""
    out: list[dict[str, Any]] = []
    for rule in rules:
        if group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]:
            rest = [r for r in rule["resources"] if r != resource]
            if rest:
                out.append({**rule, "resources": rest})
            verbs = [v for v in rule["verbs"] if v != verb]
            if verbs:
                out.append({**rule, "resources": [resource], "verbs": verbs})
        else:
            out.append(rule)
    return out


def label(permission: Permission) -> str:
    kind, group, resource, verb = permission
    return f"{kind}:{group or 'core'}/{resource}:{verb}"
