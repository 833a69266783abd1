"""The protocol's split of a trace into its tuning part and its evaluation part."""

from __future__ import annotations

import pytest

from infleet.autoscaler.simulator.trace import TUNING_FRACTION, TraceError, TraceRequest, split
from infleet.autoscaler.simulator.workloads import DURATION, FLASH_AT, flash_crowd


def test_the_cut_is_by_time_and_the_evaluation_part_starts_at_zero() -> None:
    # a burst of 90 requests early on must not move the cut: 60% of the span, not of the requests
    trace = [TraceRequest(10.0 + 0.01 * i, 100, 10) for i in range(90)] + [
        TraceRequest(float(t), 200, 20) for t in range(100, 1001, 100)
    ]
    parts = split(trace)
    assert parts.cut == pytest.approx(10 + TUNING_FRACTION * 990)  # 604 s
    assert all(r.arrival < parts.cut for r in parts.tuning) and len(parts.tuning) == 90 + 6  # up to 600 s
    assert [r.arrival for r in parts.evaluation] == [0.0, 100.0, 200.0, 300.0]  # 700 s .. 1000 s
    assert len(parts.tuning) + len(parts.evaluation) == len(trace)
    assert parts.tuning == trace[:96]  # untouched


def test_a_synthetic_workload_s_event_falls_in_its_evaluation_part() -> None:
    parts = split(flash_crowd(0))
    assert parts.cut < FLASH_AT < DURATION
    assert max(r.arrival for r in parts.tuning) < FLASH_AT


@pytest.mark.parametrize(
    ("trace", "fraction", "message"),
    [
        ([], 0.6, "empty"),
        ([TraceRequest(5.0, 1, 1)] * 3, 0.6, "leaves a part empty"),
        ([TraceRequest(0.0, 1, 1), TraceRequest(1.0, 1, 1)], 1.0, "tuning fraction"),
    ],
)
def test_bad_splits_say_why(trace: list[TraceRequest], fraction: float, message: str) -> None:
    with pytest.raises(TraceError, match=message):
        split(trace, fraction)
