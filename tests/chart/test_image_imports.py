"""Each image's entry points import from what its Dockerfile puts in the image, and nothing else.

The operator image once shipped without code its handlers import (`ModuleNotFoundError: infleet.runtime`): checking
that COPY sources exist could not see it. Here pip installs each image's COPY set alone, as the Dockerfile does, and
its entry points are imported in a fresh interpreter that sees only that tree and a site-packages holding only the
distributions the Dockerfile installs (and their dependencies). The operator and gateway images must not load torch.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from .helm import ROOT
from .test_dockerfiles import dockerfile, instructions

# what `python -m infleet.<part>` runs, plus what its main() imports lazily once arguments are parsed
ENTRY_MODULES = {
    "operator": [
        "infleet.operator.__main__",
        "infleet.operator.handlers",
        "infleet.operator.autoscaling",
        "infleet.operator.deployment_metrics",
        "infleet.operator.observation",
        "infleet.operator.adapters",
    ],
    "gateway": [
        "infleet.gateway.__main__",
        "infleet.gateway.app",
        "infleet.gateway.discovery",
        "infleet.gateway.cascade",
    ],
    "runtime": [
        "infleet.runtime.__main__",
        "infleet.runtime.server.app",
        "infleet.runtime.parallel.launch",
        "infleet.runtime.fetch.__main__",
    ],
}
TORCH_FREE = {"operator", "gateway"}

# Run in a fresh interpreter without site processing (so the development install's path hooks are absent): import
# the entry points from the image tree, then name the module files loaded from outside it.
PROBE = """
import importlib, json, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
for name in json.loads(sys.argv[3]):
    importlib.import_module(name)
files = {n: getattr(m, "__file__", None) for n, m in list(sys.modules.items())}
print(json.dumps({n: f for n, f in files.items() if f}))
"""


def copy_sources(name: str) -> list[str]:
    """Build-context paths the Dockerfile copies into /src (not multi-stage `--from` copies)."""
    out: list[str] = []
    for word, arg in instructions(dockerfile(name)):
        if word == "COPY" and not arg.startswith("--"):
            out += arg.split()[:-1]
    return out


def installed_tree(name: str, dest: Path) -> Path:
    """The COPY set in a build context of its own, installed by pip as the Dockerfile installs it (`--no-deps .`)."""
    context, tree = dest / "context", dest / "tree"
    for src in copy_sources(name):
        path, target = ROOT / src, context / src
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            shutil.copytree(path, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, target)
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q", "--target", str(tree)]
    subprocess.run([*pip, str(context)], check=True, capture_output=True, timeout=300)
    return tree


def pip_requirements(name: str) -> set[str]:
    """Distribution names the Dockerfile installs (its pinned `"name==version"` arguments)."""
    runs = [arg for word, arg in instructions(dockerfile(name)) if word == "RUN"]
    specs = [m for arg in runs for m in re.findall(r'"([^"]+==[^"]+)"', arg)]
    return {Requirement(s).name.lower() for s in specs}


def closure(names: set[str]) -> set[str]:
    """The distributions and their runtime dependencies (markers evaluated here, extras not followed)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        dist = todo.pop().lower().replace("_", "-")
        if dist in seen:
            continue
        seen.add(dist)
        try:
            requires = metadata.requires(dist) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def image_site(name: str, dest: Path) -> Path:
    """A site-packages holding only the distributions the Dockerfile installs and their dependencies (links to ours,
    metadata included)."""
    site = dest / "site"
    site.mkdir()
    for dist in closure(pip_requirements(name)):
        try:
            files = metadata.distribution(dist).files or []
        except metadata.PackageNotFoundError:
            continue
        # with its .dist-info: libraries read their dependencies' metadata at import (transformers does)
        tops = {f.parts[0] for f in files if ".." not in f.parts and not f.parts[0].endswith(".pth")}
        for top in tops:
            source = Path(sysconfig.get_paths()["purelib"]) / top
            if source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    return site


@pytest.mark.parametrize("name", sorted(ENTRY_MODULES))
def test_entry_points_import_from_the_image_alone(name: str, tmp_path: Path) -> None:
    tree = installed_tree(name, tmp_path)
    site = image_site(name, tmp_path)
    proc = subprocess.run(
        [sys.executable, "-S", "-c", PROBE, str(tree), str(site), json.dumps(ENTRY_MODULES[name])],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"{name} image: its entry points do not import from its image alone:\n{proc.stderr}"
    loaded: dict[str, str] = json.loads(proc.stdout)
    ours = sorted(n for n, f in loaded.items() if n.split(".")[0] == "infleet" and not f.startswith(str(tree)))
    assert not ours, f"{name}: infleet modules loaded from outside the image tree: {ours}"
    if name in TORCH_FREE:
        assert "torch" not in loaded, f"{name} image must not need torch"
