"""Durations as people write them in SLOs, windows and budget periods: "500ms", "2s", "1m30s", "30d"."""

from __future__ import annotations

import re

UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d|w)")
# what the CRD accepts for latencies and windows: the subset of Go/CEL durations (no days)
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"


def seconds(text: str) -> float:
    """Seconds in a duration such as "1m30s", "500ms" or "2d"; ValueError for anything else."""
    if not isinstance(text, str) or not re.fullmatch(rf"(?:{_PART.pattern})+", text):
        raise ValueError(f"not a duration: {text!r} (write e.g. 500ms, 2s, 5m, 1d)")
    return sum(float(n) * UNIT_SECONDS[unit] for n, unit in _PART.findall(text))


def seconds_or_none(value: object) -> float | None:
    """Seconds, or None when the field is unset or not a duration."""
    try:
        return seconds(value)  # type: ignore[arg-type]
    except ValueError:
        return None
