"""The CPU calibration of the simulator's latency model: the fit, the stored profile, and the simulator's prediction
of a real runtime replay."""

from __future__ import annotations

import os
import statistics
from pathlib import Path

import pytest

from infleet.autoscaler.simulator import calibration
from infleet.autoscaler.simulator.baselines import Static
from infleet.autoscaler.simulator.fleet import SimConfig, simulate
from infleet.autoscaler.simulator.trace import TraceRequest

TRUE = calibration.StepFit(base_s=0.12, prefill_s_per_token=0.0015, decode_s_per_seq=0.02, prefill_base_s=0.2)


def synthetic() -> list[calibration.Measurement]:
    points = [calibration.Measurement(p, 0, TRUE.prefill_time(p)) for p in (16, 64, 128, 256)]
    return points + [calibration.Measurement(0, b, TRUE.decode_step_time(b)) for b in (1, 2, 4, 8)]


def test_the_fit_recovers_the_step_costs() -> None:
    got = calibration.fit(synthetic())
    assert got.base_s == pytest.approx(TRUE.base_s) and got.decode_s_per_seq == pytest.approx(TRUE.decode_s_per_seq)
    assert got.prefill_s_per_token == pytest.approx(TRUE.prefill_s_per_token)
    assert got.prefill_base_s == pytest.approx(TRUE.prefill_base_s)
    with pytest.raises(ValueError, match="three different shapes"):
        calibration.fit([calibration.Measurement(0, 1, 0.1)] * 5)


def test_a_saved_profile_times_the_simulator_s_steps(tmp_path: Path) -> None:
    path = calibration.save(tmp_path / "p.json", "smollm2-135m", "int8", TRUE, synthetic())
    model = calibration.load(path)
    assert model.step_time(100, 3, 5000) == pytest.approx(0.12 + 0.2 + 0.15 + 0.06)  # context does not enter
    assert model.step_time(0, 3, 5000) == pytest.approx(0.12 + 0.06)  # no prompt: no prefill fixed cost
    assert model.tier == "int8" and model.kv_capacity_tokens > 100_000
    path.write_text('{"schema": "something-else"}')
    with pytest.raises(ValueError, match="cannot read latency profile"):
        calibration.load(path)


@pytest.mark.parametrize("tier", ["bf16", "int8"])
def test_the_stored_cpu_profiles_are_plausible(tier: str) -> None:
    """Measured on this machine: decoding a batch of 8 costs less than 8 batches of 1 (weights are read once)."""
    model = calibration.load(calibration.PROFILE_DIR / f"smollm2-135m-cpu-{tier}.json")
    s = model.steps
    assert s.base_s > 0 and s.prefill_s_per_token > 0
    assert s.decode_step_time(8) < 8 * s.decode_step_time(1)


TRACE = [  # arrivals every 0.6 s, prompts 24 to 200 tokens, outputs 6 to 20: batches form and overlap prefills
    TraceRequest(0.6 * i, prompt, output)
    for i, (prompt, output) in enumerate(
        [(24, 12), (160, 8), (64, 20), (200, 6), (40, 16), (120, 10), (32, 18), (96, 12), (180, 8), (48, 14)]
    )
]
# Stated tolerance: the simulator's mean end-to-end latency within 35% of the real replay's, and its mean TTFT
# within 50% (TTFT is a short, queue-dominated time: one step more or less is a large fraction of it).
E2E_TOLERANCE, TTFT_TOLERANCE = 0.35, 0.5


CALIBRATION_TRACE = [  # another load of the same kind: the profile must not be fitted to the run it predicts
    TraceRequest(0.5 * i, prompt, output)
    for i, (prompt, output) in enumerate(
        [(140, 10), (30, 16), (220, 8), (56, 14), (100, 6), (20, 20), (180, 12), (72, 10), (36, 8), (150, 16)]
    )
]


@pytest.mark.model
@pytest.mark.slow
def test_the_calibrated_simulator_predicts_a_real_runtime_replay(tmp_path: Path) -> None:
    """Out of sample: fit on one load, predict another. The calibration load is replayed just before and just
    after the predicted one and the profile is fitted on those two replays' steps alone; the predicted replay's
    steps are never seen by the fit. Bracketing it puts the machine's load around the predicted replay into the
    fit, which is as close as a shared machine gets to taking its changing load out of the comparison."""
    from infleet.runtime.loader.smollm2 import smollm2_gguf

    engine = calibration.engine_for(smollm2_gguf(), "bf16", max_batch_tokens=512, max_num_seqs=32)
    steps: list[calibration.Measurement] = []
    calibration.replay(engine, CALIBRATION_TRACE, steps)
    real = calibration.replay(engine, TRACE)  # measured, never fitted
    calibration.replay(engine, CALIBRATION_TRACE, steps)
    path = calibration.save(tmp_path / "cpu.json", "smollm2-135m", "bf16", calibration.fit_mixed(steps), steps)

    config = SimConfig(cold_start=0.0, max_batch_tokens=512, max_num_seqs=32, initial_replicas=1, warmup=0.0)
    sim = simulate(TRACE, calibration.load(path), Static(1), config)
    sim_e2e = statistics.mean(r.finish - r.arrival for r in sim.requests)
    sim_ttft = statistics.mean(r.first_token - r.arrival for r in sim.requests)
    real_e2e = statistics.mean(r.finish - r.arrival for r in real)
    real_ttft = statistics.mean(r.first_token - r.arrival for r in real)
    report = f"e2e real {real_e2e:.2f}s sim {sim_e2e:.2f}s; TTFT real {real_ttft:.2f}s sim {sim_ttft:.2f}s"
    print(f"{report} (load average {os.getloadavg()[0]:.1f})")
    assert sim_e2e == pytest.approx(real_e2e, rel=E2E_TOLERANCE), report
    assert sim_ttft == pytest.approx(real_ttft, rel=TTFT_TOLERANCE), report


def test_simulate_command_replays_against_a_latency_profile(tmp_path: Path) -> None:
    import json

    from infleet.autoscaler.__main__ import main

    profile = calibration.save(tmp_path / "cpu.json", "smollm2-135m", "bf16", TRUE, synthetic())
    trace = tmp_path / "t.jsonl"
    rows = [{"arrival": r.arrival, "prompt_tokens": r.prompt_tokens, "output_tokens": r.output_tokens} for r in TRACE]
    trace.write_text("\n".join(json.dumps(row) for row in rows))
    out = tmp_path / "out"
    args = ["simulate", "--trace", str(trace), "--policy", "static-peak", "--latency-profile", str(profile)]
    # a CPU replica cannot meet the default 100 ms TPOT: said so, not a crash
    assert main([*args, "--gpu", "L4", "--warmup", "0", "--out", str(out)]) == 2
    args += ["--tpot-slo", "1", "--ttft-slo", "10", "--gpu", "L4", "--warmup", "0", "--cold-start", "0"]
    assert main([*args, "--out", str(out)]) == 0
    row = json.loads((out / "results.json").read_text())["static-peak"]
    assert row["requests"] == len(TRACE) and row["failed"] == 0
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["simulate", "--trace", str(trace), "--latency-profile", str(bad), "--out", str(out)]) == 2
