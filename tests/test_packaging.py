"""One distribution, one namespace: the top-level folders install as infleet.<part>, in a wheel as in editable mode."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("operator", "runtime", "autoscaler", "gateway", "cluster", "monitoring")


def source_modules() -> set[str]:
    found = {f"infleet/{p.name}" for p in (ROOT / "infleet").glob("*.py")}
    for part in PARTS:
        for path in (ROOT / part).rglob("*.py"):
            if "__pycache__" not in path.parts and (path.parent / "__init__.py").exists():
                found.add(f"infleet/{path.relative_to(ROOT).as_posix()}")
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    return next(out.glob("infleet-*.whl"))


def test_the_wheel_holds_every_module_under_the_infleet_namespace(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = source_modules() - names
    assert not missing, f"modules missing from the wheel: {sorted(missing)}"
    assert not [n for n in names if n.split("/")[0] in PARTS], "nothing installs as a bare top-level part"


def test_the_installed_wheel_imports_every_part_and_leaves_operator_alone(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    code = (
        "import operator, infleet.operator, infleet.runtime, infleet.autoscaler, infleet.gateway, infleet.cli\n"
        "assert operator.__file__.endswith('lib/python3.11/operator.py'), operator.__file__\n"
        f"assert infleet.operator.__file__.startswith({str(target)!r}), infleet.operator.__file__\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    done = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r})\n" + code],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr


def test_the_console_script_lists_its_commands() -> None:
    done = subprocess.run([Path(sys.executable).with_name("infleet"), "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    for command in ("cluster", "crds", "operator", "runtime", "gateway", "autoscaler", "report", "logs"):
        assert f"  {command} " in done.stdout
    bad = subprocess.run([Path(sys.executable).with_name("infleet"), "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown command 'nope'" in bad.stderr
