"""The e2e suite runs against the session's local fleet (repo-root conftest.py) with the chart installed by helm,
exactly as `make up` installs it."""

from __future__ import annotations

import pytest

from infleet.cluster.stack import Stack
from infleet.cluster.testing import FleetHandle


@pytest.fixture(scope="session")
def stack(fleet: FleetHandle) -> Stack:
    stack = Stack(fleet.fleet, release="e2e", namespace="infleet-e2e")
    stack.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "e2e-demo"}})
    # Only the e2e namespace: operator tests elsewhere in the session run operators of their own.
    stack.install_chart("operator.watchNamespaces={e2e-demo}", "gateway.watchNamespaces={e2e-demo}")
    return stack
