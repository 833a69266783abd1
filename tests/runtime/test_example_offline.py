"""`examples/offline.py` runs as shipped and its answers make sense."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "offline.py"


def test_the_offline_example_answers_sensibly(capsys: pytest.CaptureFixture[str]) -> None:
    answers = runpy.run_path(str(EXAMPLE))["main"]()
    capital, sky = answers
    assert "Paris" in capital, capital
    assert "blue" in sky, sky
    printed = capsys.readouterr().out
    assert "What is the capital of France? Answer in one sentence." in printed and capital in printed
