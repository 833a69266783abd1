"""A pull's progress lines (the operator reads the last one back into ModelReady)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from infleet.api import models
from infleet.runtime.fetch.progress import Progress


def test_progress_reports_the_directory_against_the_listed_total(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    progress = Progress(tmp_path, interval=0.05)
    progress.start()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "part").write_bytes(b"x" * 300)
    progress.expect(1200)
    time.sleep(0.3)
    progress.stop()
    lines = capsys.readouterr().err.splitlines()
    assert lines and models.progress_of(lines[-1]) == (300, 1200), lines
    time.sleep(0.15)
    assert capsys.readouterr().err == ""  # stopped means silent: a failure's reason stays the last line


def test_progress_lines_round_trip() -> None:
    assert models.progress_of(models.progress_line(5, 10)) == (5, 10)
    assert models.progress_of(models.progress_line(5, None)) == (5, None)
    assert models.progress_of("Fetching: lots") is None and models.progress_of("NotFound: x") is None
