"""The autoscaler benchmark has one judgement: its verdict lines are `judgement.judge`, and the committed docs quote
them as the same code renders them now."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from infleet.autoscaler.simulator.judgement import judge

ROOT = Path(__file__).resolve().parents[2]


def load_benchmark() -> Any:
    spec = importlib.util.spec_from_file_location("autoscaler_trace", ROOT / "benchmarks" / "autoscaler_trace.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_committed_results_are_judged_by_the_same_code() -> None:
    """docs/benchmarks.md quotes the verdict for each committed time scale; re-rendering must not change it."""
    bench = load_benchmark()
    report = json.loads((ROOT / "benchmarks" / "results" / "autoscaler_trace.json").read_text())
    docs = (ROOT / "docs" / "benchmarks.md").read_text()
    for block in report["scales"].values():
        text = bench.verdict(block["policies"])
        assert text == str(judge(block["policies"]))
        assert f"Verdict: {text}." in docs
