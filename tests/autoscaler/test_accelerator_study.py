"""The accelerator study's goal line is code that can say "not met", and the committed docs quote it as rendered."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def load_study() -> Any:
    spec = importlib.util.spec_from_file_location(
        "autoscaler_accelerator", ROOT / "benchmarks" / "autoscaler_accelerator.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def arm(cost: float, attainment: float) -> dict[str, float]:
    return {"cost_per_million_tokens": cost, "slo_attainment": attainment}


def test_the_goal_needs_both_the_saving_and_the_attainment() -> None:
    study = load_study()
    ref = arm(1.0, 1.0)
    assert study.goal({"chooser": arm(0.6, 0.995), study.REFERENCE: ref})["met"]
    assert not study.goal({"chooser": arm(0.75, 1.0), study.REFERENCE: ref})["met"]  # 25% lower only
    cheap_but_missing = study.goal({"chooser": arm(0.3, 0.95), study.REFERENCE: ref})
    assert not cheap_but_missing["met"] and "below" in cheap_but_missing["line"]
    # the reference itself missing 99%: the chooser must reach the reference's attainment minus the band
    assert study.goal({"chooser": arm(0.5, 0.93), study.REFERENCE: arm(1.0, 0.94)})["met"]
    assert not study.goal({"chooser": arm(0.5, 0.92), study.REFERENCE: arm(1.0, 0.94)})["met"]


def test_the_best_single_accelerator_is_the_cheapest_at_the_target() -> None:
    study = load_study()
    arms = {
        "chooser": arm(0.1, 1.0),
        "chooser on L4": arm(0.5, 0.95),  # cheapest, but misses the target
        "chooser on A100": arm(0.8, 0.99),
        "chooser on H100": arm(0.7, 1.0),
    }
    assert study.best_fixed(arms) == "chooser on H100"
    assert study.best_fixed({"chooser on L4": arm(0.5, 0.5)}) is None


def test_the_committed_docs_quote_the_committed_results() -> None:
    study = load_study()
    report = json.loads((ROOT / "benchmarks" / "results" / "autoscaler_accelerator.json").read_text())
    assert study.markdown(report) in (ROOT / "docs" / "benchmarks.md").read_text()
    for block in report["scales"].values():
        for variant in ("autoscaled", "planned"):
            assert block[variant]["goal"] == study.goal(block[variant]["arms"])
            assert block[variant]["cascade_goal"] == study.goal(block[variant]["arms"], "cascade")
