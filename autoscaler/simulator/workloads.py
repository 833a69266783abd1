"""Synthetic workloads for the autoscaler evaluation (docs/autoscaler-evaluation.md, section 1).

Each workload is a Poisson process whose rate follows a fixed shape, with log-normal prompt and output lengths. The
parameters are the module constants below. The protocol names them, and they were fixed before any policy was
tuned. The same seed always gives the same trace: numpy's PCG64 generator, thinning a homogeneous process at the
peak rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from infleet.autoscaler.simulator.trace import TraceRequest

DURATION = 3600.0  # seconds of every synthetic trace
BASE_RATE = 4.0  # requests/s
PROMPT_MEDIAN, PROMPT_SIGMA, PROMPT_MIN, PROMPT_MAX = 1000, 0.8, 16, 8000
OUTPUT_MEDIAN, OUTPUT_SIGMA, OUTPUT_MIN, OUTPUT_MAX = 100, 0.8, 1, 1000

DIURNAL_AMPLITUDE, DIURNAL_PERIOD = 0.6, 1800.0
FLASH_AT, FLASH_FACTOR, FLASH_RAMP, FLASH_HOLD = 2700.0, 5.0, 60.0, 300.0
SHIFT_AT, SHIFT_PROMPT_MEDIAN, SHIFT_PROMPT_MAX = 2700.0, 4000, 16000
IDLE_FROM, BURST_AT, BURST_FACTOR = 2400.0, 3300.0, 3.0
LONG_CONTEXT_RATE = 0.25
LONG_CONTEXT_PROMPT_MEDIAN, LONG_CONTEXT_PROMPT_SIGMA, LONG_CONTEXT_PROMPT_MIN, LONG_CONTEXT_PROMPT_MAX = (
    14000, 0.4, 2048, 28000,
)  # fmt: skip
LONG_CONTEXT_OUTPUT_MEDIAN = 200

Rate = Callable[[np.ndarray], np.ndarray]  # arrival times -> requests/s at those times


def _lengths(rng: np.random.Generator, n: int, median: float, sigma: float, low: int, high: int) -> np.ndarray:
    return np.clip(np.rint(rng.lognormal(math.log(median), sigma, n)), low, high).astype(int)


def _arrivals(rng: np.random.Generator, rate: Rate, peak: float) -> np.ndarray:
    """A Poisson process of intensity `rate` on [0, DURATION): a process at `peak`, thinned."""
    times = np.cumsum(rng.exponential(1 / peak, int(peak * DURATION * 1.2) + 100))
    while times[-1] < DURATION:  # vanishingly rare: extend rather than truncate the process
        times = np.concatenate([times, times[-1] + np.cumsum(rng.exponential(1 / peak, len(times)))])
    times = times[times < DURATION]
    return times[rng.random(len(times)) < rate(times) / peak]


def _trace(arrivals: np.ndarray, prompts: np.ndarray, outputs: np.ndarray) -> list[TraceRequest]:
    return [TraceRequest(float(t), int(p), int(o)) for t, p, o in zip(arrivals, prompts, outputs, strict=True)]


def _shaped(
    seed: int,
    rate: Rate,
    peak: float,
    prompts: Callable[[np.random.Generator, np.ndarray], np.ndarray] | None = None,
    output_median: int = OUTPUT_MEDIAN,
) -> list[TraceRequest]:
    """Arrivals following `rate`; prompts from `prompts(rng, arrivals)` (default: the base mix), outputs log-normal."""
    rng = np.random.default_rng(seed)
    arrivals = _arrivals(rng, rate, peak)
    n = len(arrivals)
    drawn = prompts(rng, arrivals) if prompts else _lengths(rng, n, PROMPT_MEDIAN, PROMPT_SIGMA, PROMPT_MIN, PROMPT_MAX)
    outputs = _lengths(rng, n, output_median, OUTPUT_SIGMA, OUTPUT_MIN, OUTPUT_MAX)
    return _trace(arrivals, drawn, outputs)


def _steady(rate: float) -> Rate:
    return lambda t: np.full_like(t, rate)


def diurnal(seed: int) -> list[TraceRequest]:
    def rate(t: np.ndarray) -> np.ndarray:
        return BASE_RATE * (1 + DIURNAL_AMPLITUDE * np.sin(2 * math.pi * t / DIURNAL_PERIOD - math.pi / 2))

    return _shaped(seed, rate, BASE_RATE * (1 + DIURNAL_AMPLITUDE))


def flash_crowd_rate(t: np.ndarray) -> np.ndarray:
    """The base rate, a linear climb to FLASH_FACTOR x within FLASH_RAMP, a hold of FLASH_HOLD, the base again."""
    climb = np.clip((t - FLASH_AT) / FLASH_RAMP, 0.0, 1.0)
    during = (t >= FLASH_AT) & (t < FLASH_AT + FLASH_RAMP + FLASH_HOLD)
    return BASE_RATE * (1 + np.where(during, (FLASH_FACTOR - 1) * climb, 0.0))


def flash_crowd(seed: int) -> list[TraceRequest]:
    return _shaped(seed, flash_crowd_rate, BASE_RATE * FLASH_FACTOR)


def long_prompt_shift(seed: int) -> list[TraceRequest]:
    def prompts(rng: np.random.Generator, arrivals: np.ndarray) -> np.ndarray:
        before = _lengths(rng, len(arrivals), PROMPT_MEDIAN, PROMPT_SIGMA, PROMPT_MIN, PROMPT_MAX)
        after = _lengths(rng, len(arrivals), SHIFT_PROMPT_MEDIAN, PROMPT_SIGMA, PROMPT_MIN, SHIFT_PROMPT_MAX)
        return np.where(arrivals < SHIFT_AT, before, after)

    return _shaped(seed, _steady(BASE_RATE), BASE_RATE, prompts)


def idle_then_burst_rate(t: np.ndarray) -> np.ndarray:
    return np.where(t < IDLE_FROM, BASE_RATE, np.where(t < BURST_AT, 0.0, BASE_RATE * BURST_FACTOR))


def idle_then_burst(seed: int) -> list[TraceRequest]:
    return _shaped(seed, idle_then_burst_rate, BASE_RATE * BURST_FACTOR)


def long_context(seed: int) -> list[TraceRequest]:
    def prompts(rng: np.random.Generator, arrivals: np.ndarray) -> np.ndarray:
        return _lengths(
            rng,
            len(arrivals),
            LONG_CONTEXT_PROMPT_MEDIAN,
            LONG_CONTEXT_PROMPT_SIGMA,
            LONG_CONTEXT_PROMPT_MIN,
            LONG_CONTEXT_PROMPT_MAX,
        )

    return _shaped(seed, _steady(LONG_CONTEXT_RATE), LONG_CONTEXT_RATE, prompts, LONG_CONTEXT_OUTPUT_MEDIAN)


WORKLOADS: dict[str, Callable[[int], list[TraceRequest]]] = {
    "diurnal": diurnal,
    "flash-crowd": flash_crowd,
    "long-prompt-shift": long_prompt_shift,
    "idle-then-burst": idle_then_burst,
    "long-context": long_context,
}


def generate(name: str, seed: int) -> list[TraceRequest]:
    """The named synthetic workload for `seed`, sorted by arrival, in seconds from 0."""
    if name not in WORKLOADS:
        raise ValueError(f"unknown synthetic workload {name!r}; known: {', '.join(WORKLOADS)}")
    return WORKLOADS[name](seed)
