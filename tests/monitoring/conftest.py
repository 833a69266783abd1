"""Shared fixtures: the promtool and prometheus binaries (Debian's `prometheus` package, installed by `make test`'s
fleet-bins step). Missing binaries fail the suite rather than skip it: these checks are the acceptance criteria."""

from __future__ import annotations

import shutil

import pytest


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: run `make fleet-bins` (installs Debian's prometheus package)", pytrace=False)
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return binary("promtool")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return binary("prometheus")
