"""The synthetic workloads of the evaluation protocol: deterministic for a seed, each with its defining shape."""

from __future__ import annotations

import math

import numpy as np
import pytest

from infleet.autoscaler.latency_model import MODELS, LatencyModel, device
from infleet.autoscaler.simulator import workloads as w


def per_minute(trace: list, start: float) -> int:
    return sum(1 for r in trace if start <= r.arrival < start + 60)


@pytest.mark.parametrize("name", list(w.WORKLOADS))
def test_same_seed_same_trace_and_a_new_seed_a_new_one(name: str) -> None:
    a, b, c = w.generate(name, 7), w.generate(name, 7), w.generate(name, 8)
    assert a == b and a != c
    arrivals = [r.arrival for r in a]
    assert arrivals == sorted(arrivals) and arrivals[0] >= 0 and arrivals[-1] < w.DURATION
    assert all(r.prompt_tokens >= 1 and r.output_tokens >= 1 for r in a)


def test_unknown_workload_is_named() -> None:
    with pytest.raises(ValueError, match="unknown synthetic workload 'tidal'"):
        w.generate("tidal", 0)


def test_the_flash_crowd_reaches_five_times_the_base_within_a_minute() -> None:
    trace = w.flash_crowd(0)
    base = np.mean([per_minute(trace, t) for t in range(0, int(w.FLASH_AT), 60)])
    assert base == pytest.approx(w.BASE_RATE * 60, rel=0.05)
    before = per_minute(trace, w.FLASH_AT - 60)
    after = per_minute(trace, w.FLASH_AT + w.FLASH_RAMP)  # the first whole minute after the one-minute climb
    assert before / base == pytest.approx(1, abs=0.2)
    assert after / base == pytest.approx(w.FLASH_FACTOR, rel=0.12)
    end = w.FLASH_AT + w.FLASH_RAMP + w.FLASH_HOLD
    assert per_minute(trace, end + 60) / base == pytest.approx(1, abs=0.2)  # and back


def test_idle_then_burst_has_a_gap_with_no_arrivals_then_a_burst() -> None:
    trace = w.idle_then_burst(0)
    assert not [r for r in trace if w.IDLE_FROM <= r.arrival < w.BURST_AT]
    assert per_minute(trace, w.IDLE_FROM - 60) > 0
    burst = per_minute(trace, w.BURST_AT) / 60
    assert burst == pytest.approx(w.BASE_RATE * w.BURST_FACTOR, rel=0.12)


def test_the_long_prompt_shift_changes_the_mean_prompt_at_the_shift_point() -> None:
    trace = w.long_prompt_shift(0)
    early = [r.prompt_tokens for r in trace if r.arrival < w.SHIFT_AT - 600]
    late_before = [r.prompt_tokens for r in trace if w.SHIFT_AT - 600 <= r.arrival < w.SHIFT_AT]
    after = [r.prompt_tokens for r in trace if r.arrival >= w.SHIFT_AT]
    assert np.mean(late_before) == pytest.approx(np.mean(early), rel=0.1)  # nothing changes before the shift
    assert np.mean(after) > 3 * np.mean(late_before)
    rate_before = sum(1 for r in trace if r.arrival < w.SHIFT_AT) / w.SHIFT_AT
    rate_after = len(after) / (w.DURATION - w.SHIFT_AT)
    assert rate_after == pytest.approx(rate_before, rel=0.1)  # only the mix moves


def test_the_diurnal_rate_swings_between_trough_and_peak() -> None:
    trace = w.diurnal(0)
    counts = np.bincount([int(r.arrival // 120) for r in trace], minlength=30)
    trough, peak = counts[0], counts[int(w.DIURNAL_PERIOD / 2 // 120)]  # trough at 0, peak half a period later
    assert peak > 2.5 * trough
    assert np.mean(counts) / 120 == pytest.approx(w.BASE_RATE, rel=0.05)


def test_long_context_prefill_alone_misses_the_ttft_target_for_a_large_share() -> None:
    """Llama-3.1-8B fp8 on an L4, 512-token chunks, TTFT 2 s: the setting of the autoscaler benchmark."""
    trace = w.long_context(0)
    prompts = np.array([r.prompt_tokens for r in trace])
    assert prompts.mean() > 10_000
    model = LatencyModel(device("NVIDIA-L4"), MODELS["llama-3.1-8b"], "fp8")
    alone = np.array([math.ceil(p / 512) * model.step_time(512, 0, int(p)) for p in prompts])
    assert 0.3 < float(np.mean(alone > 2.0)) < 0.7
