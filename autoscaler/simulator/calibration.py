"""The simulator's latency model for a CPU, calibrated on infleet's own runtime rather than a datasheet roofline.

A continuous-batching step on a CPU costs a fixed part (reading every weight once, scheduling, sampling), a part per
prompt token it prefills and a part per sequence it decodes; a step that prefills at all pays a further fixed part
(the prompt path's own kernels and masks: measured here, a 16-token prefill step takes about three decode steps).
`measure` times single engine steps of the real runtime (`LLMEngine`, SmolLM2 or any model it loads): prefill-only
steps of several prompt lengths and decode-only steps of several batch sizes. `fit` finds, by least squares over all
of them at once,

    step seconds = base + (prefill_base_s + prefill_s_per_token x prompt tokens, if any) + decode_s_per_seq x seqs

and `save`/`load` keep that fit as a latency profile (`infleet.latency-profile/v1`, JSON) that `CalibratedModel`
replays in the simulator (`infleet autoscaler simulate --latency-profile FILE`). The KV cache read grows with the
context; for SmolLM2's short contexts on this CPU it is a few percent of the weights and is left out (the fit's
base absorbs the contexts it was measured at).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from infleet.autoscaler.latency_model import MODELS, TIER_BYTES, Device, LatencyModel

SCHEMA = "infleet.latency-profile/v1"
# the profiles measured on this project's CPU, beside the code that reads them
PROFILE_DIR = Path(__file__).resolve().parent / "profiles"


@dataclass(frozen=True)
class Measurement:
    """One timed engine step: `prompt_tokens` prefilled and `decode_seqs` sequences decoded, in `seconds`."""

    prompt_tokens: int
    decode_seqs: int
    seconds: float


@dataclass(frozen=True)
class StepFit:
    base_s: float
    prefill_s_per_token: float
    decode_s_per_seq: float
    prefill_base_s: float = 0.0

    def step_time(self, prompt_tokens: int, decode_seqs: int) -> float:
        prefill = self.prefill_base_s + self.prefill_s_per_token * prompt_tokens if prompt_tokens > 0 else 0.0
        return self.base_s + prefill + self.decode_s_per_seq * decode_seqs

    def prefill_time(self, tokens: int) -> float:
        return self.step_time(tokens, 0)

    def decode_step_time(self, batch: int) -> float:
        return self.step_time(0, batch)


def fit(measurements: Sequence[Measurement]) -> StepFit:
    """Two least-squares lines over each shape's median step (on a shared machine a step now and then takes several
    times its usual time): decode-only steps give the base and the cost per sequence, prefill-only steps the prefill
    line, whose excess over the base is the prefill's own fixed part. Every coefficient is a time: never negative."""
    shapes = median_by_shape(measurements)
    prefill = {p: t for (p, b), t in shapes.items() if p > 0 and b == 0}
    decode = {b: t for (p, b), t in shapes.items() if p == 0 and b > 0}
    if len(prefill) < 2 or len(decode) < 2:
        raise ValueError(
            "a fit needs at least three different shapes: two prompt lengths and two decode batch sizes at least"
        )

    def line(points: dict[int, float]) -> tuple[float, float]:
        x = np.array(list(points), dtype=float)
        slope, intercept = np.polyfit(x, np.array(list(points.values())), 1)
        return max(0.0, float(intercept)), max(0.0, float(slope))

    base, per_seq = line(decode)
    prefill_intercept, per_token = line(prefill)
    return StepFit(base, per_token, per_seq, max(0.0, prefill_intercept - base))


def fit_mixed(steps: Sequence[Measurement]) -> StepFit:
    """Least squares over the steps of a replayed load (`replay(..., steps=...)`): mixed prefill and decode steps in
    the proportions a real load makes, so the fit's mean step matches that load's mean step. Never negative."""
    if len({(m.prompt_tokens > 0, m.decode_seqs) for m in steps}) < 3 or not any(m.prompt_tokens for m in steps):
        raise ValueError("a replay to fit needs prefill steps and decode steps of at least two batch sizes")
    a = np.array([[1.0, m.prompt_tokens, m.decode_seqs, float(m.prompt_tokens > 0)] for m in steps])
    coef, *_ = np.linalg.lstsq(a, np.array([m.seconds for m in steps]), rcond=None)
    base, per_token, per_seq, prefill_base = (max(0.0, float(c)) for c in coef)
    return StepFit(base, per_token, per_seq, prefill_base)


@dataclass(frozen=True)
class CalibratedModel(LatencyModel):
    """The roofline model's interface (the fleet calls `step_time` and `kv_capacity_tokens`), timed by a fit."""

    steps: StepFit = StepFit(0.0, 0.0, 0.0)

    def step_time(self, new_tokens: int, decode_seqs: int, context_tokens: int) -> float:
        return self.steps.step_time(new_tokens, decode_seqs)


def save(path: str | Path, model: str, tier: str, steps: StepFit, points: Iterable[Measurement], **extra: Any) -> Path:
    doc = {
        "schema": SCHEMA,
        "model": model,
        "tier": tier,
        "device": "cpu",
        "device_detail": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "fit": asdict(steps),
        "measurements": [asdict(m) for m in points],
        **extra,
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    return out


def load(path: str | Path, memory_bytes: float = 16e9, device_name: str | None = None) -> CalibratedModel:
    """A latency profile as the simulator's model; `model` must name a `latency_model.MODELS` shape. `device_name`
    labels the device for pricing (a CPU-measured replica billed as the GPU node it stands in for)."""
    try:
        doc = json.loads(Path(path).read_text())
        if doc.get("schema") != SCHEMA:
            raise ValueError(f"schema is {doc.get('schema')!r}, not {SCHEMA}")
        steps = StepFit(**{k: float(v) for k, v in doc["fit"].items()})
        shape = MODELS[doc["model"]]
        tier = str(doc["tier"])
        if tier not in TIER_BYTES:
            raise ValueError(f"unknown tier {tier!r}")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"cannot read latency profile {path}: {err}") from None
    # the fit replaces the roofline's step time; the effective FLOP/s (prefill rate) still bounds capacity planning
    # (`LatencyModel.capacity`), the effective bandwidth is what one step's weight read implies, memory sizes the KV
    flops = 2 * shape.parameters / steps.prefill_s_per_token if steps.prefill_s_per_token > 0 else 1e18
    bandwidth = shape.parameters * TIER_BYTES[tier] / steps.base_s if steps.base_s > 0 else 1e18
    device = Device(device_name or str(doc.get("device", "cpu")), memory_bytes, bandwidth, flops, flops, flops)
    return CalibratedModel(device, shape, tier, mfu=1.0, mbu=1.0, step_overhead=steps.base_s, steps=steps)


# ---- measuring the runtime --------------------------------------------------------------------------------------


def engine_for(model_path: str | Path, tier: str, max_batch_tokens: int = 512, max_num_seqs: int = 32) -> Any:
    """infleet's engine on `model_path` in `tier`, without prefix caching (repeated prompts must cost full prefill)."""
    import torch

    from infleet.runtime.config import EngineConfig
    from infleet.runtime.engine.engine import LLMEngine, apply_tier
    from infleet.runtime.loader import load_model
    from infleet.runtime.model.llama import fuse_projections

    model, config, tokenizer = load_model(model_path, dtype=torch.float32)
    fuse_projections(model)  # as `serve` runs it
    if tier != "bf16":  # bf16 is the float weights as loaded (docs/architecture.md)
        model = apply_tier(model, tier)
    cfg = EngineConfig(
        tier=tier,
        max_batch_tokens=max_batch_tokens,
        max_prefill_tokens=max_batch_tokens,
        max_model_len=2048,
        max_num_seqs=max_num_seqs,
        prefix_caching=False,
    )
    return LLMEngine(model, config, tokenizer, cfg)


def _prompt(engine: Any, length: int, salt: int) -> list[int]:
    vocab = engine.config.vocab_size
    return [(1000 + 7919 * (i + 31 * salt)) % (vocab - 2000) + 1000 for i in range(length)]


def measure(
    engine: Any,
    prompt_lengths: Sequence[int] = (16, 64, 128, 256),
    batches: Sequence[int] = (1, 2, 4, 8),
    repeats: int = 3,
    decode_steps: int = 6,
) -> list[Measurement]:
    """Time prefill-only steps (one request of each prompt length, `repeats` times) and decode-only steps (each
    batch size, `decode_steps` steps after its prefill). One warm-up step first (allocations, kernel choice)."""
    from infleet.runtime.engine.sampler import SamplingParams

    salt = 0

    def run_alone(prompts: list[list[int]], tokens: int) -> list[float]:
        """Add the requests, run to completion, return each step's time (the first step is their prefill)."""
        nonlocal salt
        params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
        for p in prompts:
            salt += 1
            engine.add_request(f"cal-{salt}", p, params)
        times = []
        while engine.has_unfinished():
            started = time.perf_counter()
            engine.step()
            times.append(time.perf_counter() - started)
        return times

    run_alone([_prompt(engine, 32, 0)], 2)  # warm-up
    out: list[Measurement] = []
    for _ in range(repeats):
        for length in prompt_lengths:
            (seconds,) = run_alone([_prompt(engine, length, salt + 1)], 1)
            out.append(Measurement(length, 0, seconds))
    for batch in batches:
        prompts = [_prompt(engine, 16, salt + 1 + b) for b in range(batch)]
        times = run_alone(prompts, 1 + decode_steps)
        # step 0 prefilled all of them; the rest decode the whole batch
        out += [Measurement(0, batch, t) for t in times[1:]]
    return out


@dataclass(frozen=True)
class Served:
    """One request of a real replay: seconds from the replay's start."""

    arrival: float
    first_token: float
    finish: float


def _hand_over(scheduler: Any, batch: list[Any]) -> None:
    """The scheduler's next `schedule()` returns `batch` (scheduled already, to read its shape), then it is itself."""

    def scheduled() -> list[Any]:
        del scheduler.schedule  # the instance attribute goes: the class's method answers again
        return batch

    scheduler.schedule = scheduled


def replay(engine: Any, trace: Sequence[Any], steps: list[Measurement] | None = None) -> list[Served]:
    """Replay `trace` (`TraceRequest`s: arrival, prompt and output tokens) open-loop against the engine in real time,
    as one server would: arrivals join between steps, greedy decoding, end-of-sequence ignored so each request
    produces exactly its output tokens. Returns, per request in trace order, when its first token and its last came;
    with `steps`, also appends every engine step's shape and time (mixed steps, as a real load makes them)."""
    from infleet.runtime.engine.sampler import SamplingParams

    pending = sorted(range(len(trace)), key=lambda i: trace[i].arrival)
    first: dict[str, float] = {}
    done: dict[str, float] = {}
    start = time.perf_counter()
    while pending or engine.has_unfinished():
        now = time.perf_counter() - start
        while pending and trace[pending[0]].arrival <= now:
            i = pending.pop(0)
            r = trace[i]
            params = SamplingParams(max_tokens=r.output_tokens, temperature=0.0, ignore_eos=True)
            engine.add_request(f"replay-{i}", _prompt(engine, r.prompt_tokens, 10_000 + i), params)
        if not engine.has_unfinished():
            time.sleep(max(0.0, min(0.01, trace[pending[0]].arrival - now)))
            continue
        if steps is not None:  # the step's shape, read the way the engine will schedule it
            batch = engine.scheduler.schedule()
            _hand_over(engine.scheduler, batch)
            decodes = sum(1 for e in batch if e.seq.num_computed_tokens >= e.seq.prompt_len)
            prompt = sum(e.num_tokens for e in batch if e.seq.num_computed_tokens < e.seq.prompt_len)
        began = time.perf_counter()
        outputs = engine.step()
        at = time.perf_counter() - start
        if steps is not None:
            steps.append(Measurement(prompt, decodes, time.perf_counter() - began))
        for out in outputs:
            if out.new_token_ids:
                first.setdefault(out.request_id, at)
            if out.finished:
                done[out.request_id] = at
    return [Served(r.arrival, first[f"replay-{i}"], done[f"replay-{i}"]) for i, r in enumerate(trace)]


def median_by_shape(points: Sequence[Measurement]) -> dict[tuple[int, int], float]:
    """Median seconds per (prompt tokens, decoding sequences): the table the notes and docs quote."""
    shapes: dict[tuple[int, int], list[float]] = {}
    for m in points:
        shapes.setdefault((m.prompt_tokens, m.decode_seqs), []).append(m.seconds)
    return {k: statistics.median(v) for k, v in sorted(shapes.items())}


# the load `main` replays to calibrate: arrivals every 0.5 s, prompts 20 to 220 tokens, outputs 6 to 20, so steps
# mix prefill chunks with decode batches of one to several sequences, as a server's steps do
CALIBRATION_LOAD = (
    (140, 10), (30, 16), (220, 8), (56, 14), (100, 6), (20, 20), (180, 12), (72, 10), (36, 8), (150, 16),
)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """`python -m infleet.autoscaler.simulator.calibration [--tier T ...] [--out DIR]`: measure and store profiles."""
    import argparse

    import torch

    from infleet.runtime.loader.smollm2 import smollm2_gguf

    parser = argparse.ArgumentParser(prog="python -m infleet.autoscaler.simulator.calibration")
    parser.add_argument("--tier", action="append", choices=sorted(TIER_BYTES), help="repeatable; default bf16, int8")
    parser.add_argument("--out", type=Path, default=PROFILE_DIR)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    from infleet.autoscaler.simulator.trace import TraceRequest

    load_trace = [TraceRequest(0.5 * i, p, o) for i, (p, o) in enumerate(CALIBRATION_LOAD)]
    for tier in args.tier or ["bf16", "int8"]:
        engine = engine_for(smollm2_gguf(), tier)
        points = measure(engine, repeats=args.repeats)  # isolated steps: the table below
        replayed: list[Measurement] = []
        replay(engine, load_trace, replayed)
        steps = fit_mixed(replayed)  # the fit: mixed steps of a replayed load
        load_average = os.getloadavg()[0]
        path = save(
            args.out / f"smollm2-135m-cpu-{tier}.json",
            "smollm2-135m",
            tier,
            steps,
            replayed,
            isolated_steps=[asdict(m) for m in points],
            threads=torch.get_num_threads(),
            load_average=round(load_average, 2),
        )
        table = ", ".join(f"{k}: {v * 1000:.0f} ms" for k, v in median_by_shape(points).items())
        print(f"{tier}: {steps} (load average {load_average:.1f}); (prompt, batch) medians {table}; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
