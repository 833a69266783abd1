"""The e2e suite runs against the session's local fleet (repo-root conftest.py) with the chart installed by helm,
exactly as `make up` installs it."""

from __future__ import annotations

import os

import pytest

from infleet.cluster.stack import Stack
from infleet.cluster.testing import FleetHandle

# Two e2e runs can share one fleet when each names its own release (INFLEET_E2E_RELEASE).
RELEASE = os.environ.get("INFLEET_E2E_RELEASE", "e2e")


@pytest.fixture(scope="session")
def stack(fleet: FleetHandle) -> Stack:
    demo = f"{RELEASE}-demo"
    stack = Stack(fleet.fleet, release=RELEASE, namespace=f"infleet-{RELEASE}")
    stack.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": demo}})
    # Only the demo namespace: operator tests elsewhere in the session run operators of their own.
    stack.install_chart(f"operator.watchNamespaces={{{demo}}}", f"gateway.watchNamespaces={{{demo}}}")
    return stack
