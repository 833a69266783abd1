"""Fixtures every suite shares: the local fleet (session scope) and a fresh namespace per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from infleet.cluster.testing import FleetHandle, fresh_namespace, session_fleet


@pytest.fixture(scope="session")
def fleet() -> Iterator[FleetHandle]:
    yield from session_fleet()


@pytest.fixture
def namespace(fleet: FleetHandle) -> Iterator[str]:
    yield from fresh_namespace(fleet)
