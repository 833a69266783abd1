"""Fixtures every suite shares: the local fleet (session scope) and a fresh namespace per test."""

from __future__ import annotations

import os
from collections.abc import Iterator

# Triton kernels run on CPU through Triton's interpreter in every test (tests/kernels/), and a kernel is interpreted
# or compiled as it is decorated: set before collection imports any module that imports one (the engine does).
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from infleet.cluster.testing import FleetHandle, fresh_namespace, session_fleet


@pytest.fixture(scope="session")
def fleet() -> Iterator[FleetHandle]:
    yield from session_fleet()


@pytest.fixture
def namespace(fleet: FleetHandle) -> Iterator[str]:
    yield from fresh_namespace(fleet)
