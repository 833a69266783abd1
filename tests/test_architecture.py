"""The import rules of docs/architecture.md, read from the source with `ast` (lazy imports inside functions count)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("operator", "runtime", "autoscaler", "gateway", "cluster", "monitoring")

# part -> parts it must never import (its own sub-folders may be excepted below)
FORBIDDEN: dict[str, set[str]] = {
    "runtime": set(PARTS) - {"runtime"},
    "gateway": set(PARTS) - {"gateway"},
    "autoscaler": {"operator", "gateway", "cluster"},
    "operator": {"runtime", "gateway", "cluster"},
    "monitoring": {"gateway", "cluster", "autoscaler"},
}


def imported_parts(path: Path) -> set[str]:
    """The infleet parts a module imports, at any depth of its code."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        out |= {n.split(".")[1] for n in names if n.startswith("infleet.") and n.split(".")[1] in PARTS}
    return out


def violations(part: str, forbidden: set[str], skip: str | None = None) -> list[str]:
    found = []
    for path in sorted((ROOT / part).rglob("*.py")):
        if skip and skip in path.relative_to(ROOT).parts:
            continue
        bad = imported_parts(path) & forbidden
        found += [f"{path.relative_to(ROOT)} imports infleet.{p}" for p in sorted(bad)]
    return found


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_parts_import_only_what_the_architecture_allows(part: str) -> None:
    assert violations(part, FORBIDDEN[part]) == []


def test_the_autoscaler_outside_its_simulator_never_imports_the_runtime() -> None:
    assert violations("autoscaler", {"runtime"}, skip="simulator") == []


def test_no_production_part_imports_the_local_fleet() -> None:
    for part in set(PARTS) - {"cluster"}:
        assert violations(part, {"cluster"}) == []


def test_the_rules_can_fail() -> None:
    """The reader sees a lazy import inside a function, so the checks above are not vacuous."""
    assert imported_parts(ROOT / "autoscaler" / "simulator" / "calibration.py") >= {"runtime"}
    assert "operator" in imported_parts(ROOT / "operator" / "__main__.py")


def test_the_shared_vocabulary_imports_no_part_and_no_heavy_library() -> None:
    """infleet/api is what every part may import: it imports none of them, nor torch, kubernetes, kopf or starlette
    (pydantic and prometheus_client are in every image)."""
    heavy = {"torch", "kubernetes", "kopf", "transformers", "httpx", "starlette", "fastapi"}
    for path in sorted((ROOT / "infleet" / "api").glob("*.py")):
        assert imported_parts(path) == set(), path
        tree = ast.parse(path.read_text())
        modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not {m.split(".")[0] for m in modules} & heavy, (path, modules)


def test_the_tier_names_are_declared_once() -> None:
    from typing import get_args

    from infleet.api.tiers import TIERS
    from infleet.operator import api

    assert get_args(api.Tier) == TIERS == api.TIERS
    for path in ("runtime/quant/tiers.py", "runtime/__main__.py", "monitoring/report.py", "operator/api.py"):
        assert '("bf16", "fp8", "int8", "int4")' not in (ROOT / path).read_text(), path


def test_the_request_path_names_at_most_ten_runtime_files_and_each_exists() -> None:
    """What a newcomer reads first stays short, and every file it names is real."""
    import re

    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## The request path (runtime)")[1].split("KServe v2 requests")[0]
    named = set(re.findall(r"`(runtime/[\w/]+\.py)`", section))
    assert 5 <= len(named) <= 10, sorted(named)
    assert all((ROOT / path).is_file() for path in named), sorted(p for p in named if not (ROOT / p).is_file())
