"""The `infleet` command as a user meets it: the installed console script, not the function."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest


def infleet(*args: str) -> subprocess.CompletedProcess[str]:
    script = shutil.which("infleet", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.fail("the infleet console script is not installed beside this interpreter")
    return subprocess.run([script, *args], capture_output=True, text=True, timeout=120)


def test_version_names_the_installed_distribution() -> None:
    proc = infleet("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"infleet {version('infleet')}"


def test_no_arguments_print_usage_and_exit_2() -> None:
    proc = infleet()
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: infleet") and "cluster" in proc.stderr and not proc.stdout


def test_unknown_command_is_named() -> None:
    proc = infleet("deploy")
    assert proc.returncode == 2 and "unknown command 'deploy'" in proc.stderr
