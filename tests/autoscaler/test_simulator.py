"""The fleet simulator: traces, the roofline latency model, determinism, conservation, baselines, the CLI."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from infleet.autoscaler.__main__ import main
from infleet.autoscaler.latency_model import MODELS, LatencyModel, calibrated, device
from infleet.autoscaler.simulator.baselines import KPA, Static
from infleet.autoscaler.simulator.experiment import describe, make_policy
from infleet.autoscaler.simulator.fleet import FleetObservation, SimConfig, check_conservation, simulate
from infleet.autoscaler.simulator.trace import AZURE_CODE_TRACE, TraceError, TraceRequest, load_trace

L4_8B = LatencyModel(device("L4"), MODELS["llama-3.1-8b"], "fp8")


def bursty_trace(seed: int = 3, n: int = 600) -> list[TraceRequest]:
    """Quiet, then a burst, then quiet: enough to make every policy scale both ways."""
    rng = random.Random(seed)
    out, t = [], 0.0
    for i in range(n):
        t += rng.expovariate(6.0 if 200 <= i < 450 else 0.2)
        out.append(TraceRequest(t, rng.randint(200, 3000), rng.randint(1, 200)))
    return out


# --- traces ------------------------------------------------------------------------------------------------
def test_reads_azure_csv_and_jsonl(tmp_path: Path) -> None:
    csv = tmp_path / "t.csv"
    csv.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:17:04.0319600,3180,8\n"
        "2023-11-16 18:17:03.9799600,4808,10\n"
    )
    reqs = load_trace(csv, time_scale=2.0)
    assert [r.prompt_tokens for r in reqs] == [4808, 3180]  # sorted by arrival
    assert reqs[0].arrival == 0 and reqs[1].arrival == pytest.approx(0.052 / 2)
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text(
        '{"arrival": 5, "prompt_tokens": 10, "output_tokens": 2}\n\n'
        '{"arrival": 1.5, "prompt_tokens": 7, "output_tokens": 1}\n'
    )
    assert load_trace(jsonl) == [TraceRequest(0.0, 7, 1), TraceRequest(3.5, 10, 2)]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.csv", "time,prompt\n1,2\n", "needs the columns"),
        ("b.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-01-01 00:00:00,-3,4\n", "b.csv:2"),
        ("c.jsonl", '{"arrival": 1}\n', "c.jsonl:1"),
        ("d.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n", "no requests"),
    ],
)
def test_bad_traces_say_where(tmp_path: Path, name: str, text: str, message: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(TraceError, match=message):
        load_trace(tmp_path / name)


def test_real_azure_trace_loads() -> None:
    path = AZURE_CODE_TRACE
    if not path.exists():
        pytest.skip("the shared Azure trace is not on this machine")
    reqs = load_trace(path)
    assert len(reqs) == 8819 and 3400 < reqs[-1].arrival < 3600


# --- latency model ------------------------------------------------------------------------------------------
def test_roofline_decode_is_bandwidth_bound_and_prefill_compute_bound() -> None:
    lm = LatencyModel(device("H100"), MODELS["llama-3.1-8b"], "bf16", step_overhead=0)
    weights = 8.03e9 * 2
    assert lm.decode_step_time(1, 0) == pytest.approx(weights / (3.35e12 * 0.8))
    assert lm.prefill_time(4096) == pytest.approx(2 * 8.03e9 * 4096 / (989e12 * 0.5))
    # KV reads grow the decode step; int4 weights shrink it
    assert lm.decode_step_time(64, 64 * 2000) > lm.decode_step_time(64, 0)
    int4 = LatencyModel(device("H100"), MODELS["llama-3.1-8b"], "int4", step_overhead=0)
    assert int4.decode_step_time(1, 0) < lm.decode_step_time(1, 0) / 3


def test_cpu_calibration_reproduces_the_measurements() -> None:
    # SmolLM2 int8 on this machine's class of CPU: about 7 ms per batch-1 decode step, 900 prompt tokens/s
    lm = calibrated(MODELS["smollm2-135m"], "int8", decode_step_seconds=0.007, prefill_tokens_per_second=900)
    assert lm.decode_step_time(1, 0) == pytest.approx(0.007)
    assert lm.prefill_time(900) == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(ValueError):
        calibrated(MODELS["smollm2-135m"], "int8", decode_step_seconds=0, prefill_tokens_per_second=900)


def test_capacity_shrinks_with_a_tighter_slo() -> None:
    loose = L4_8B.capacity(2000, 30, tpot_slo=0.2, ttft_slo=5)
    tight = L4_8B.capacity(2000, 30, tpot_slo=0.05, ttft_slo=5)
    assert 0 < tight < loose


# --- the fleet ----------------------------------------------------------------------------------------------
def run(policy_name: str, seed: int = 0, trace: list[TraceRequest] | None = None):  # type: ignore[no-untyped-def]
    trace = trace or bursty_trace()
    config = SimConfig(seed=seed, cold_start=20)
    workload = describe(trace, L4_8B, config)
    return simulate(trace, L4_8B, make_policy(policy_name, workload, config, L4_8B), config), config


def test_deterministic_for_a_seed() -> None:
    a, _ = run("infleet", seed=5)
    b, _ = run("infleet", seed=5)
    assert [(r.first_token, r.finish) for r in a.requests] == [(r.first_token, r.finish) for r in b.requests]
    assert a.gpu_seconds == b.gpu_seconds and a.timeline.replicas == b.timeline.replicas
    c, _ = run("infleet", seed=6)  # the seed moves the cold starts, so the latencies move
    assert [r.first_token for r in a.requests] != [r.first_token for r in c.requests]


@pytest.mark.parametrize("policy", ["infleet", "hpa-gpu-util", "keda-queue", "knative-kpa", "static-peak"])
def test_every_request_completes_or_fails_and_every_token_is_counted(policy: str) -> None:
    result, config = run(policy)
    assert len(result.requests) == 600
    completed = [r for r in result.requests if not r.failed]
    assert len(completed) + result.failed == 600
    check_conservation(result, 600)
    assert result.tokens == sum(r.prompt + r.output - 1 for r in completed)
    assert result.gpu_seconds > 0 and 0 < result.slo_attainment(config.ttft_slo, config.tpot_slo) <= 1
    assert max(result.timeline.replicas) > 1  # the burst made the fleet grow


def test_failures_are_counted_not_lost() -> None:
    trace = [TraceRequest(0, 100, 10), TraceRequest(1, 200_000, 10), TraceRequest(2, 100, 10)]
    config = SimConfig(initial_replicas=0, hold_timeout=30)

    class Never:  # a policy that never scales up: held requests must time out as failures
        name, interval = "never", 10.0

        def desired(self, obs: FleetObservation) -> int:
            return 0

    result = simulate(trace, L4_8B, Never(), config)
    reasons = [r.failed for r in result.requests]
    assert reasons[1] is not None and "exceed" in reasons[1]
    assert all(reason is not None and "held at the gateway" in reason for reason in (reasons[0], reasons[2]))
    assert result.failed == 3 and result.slo_attainment(2, 0.1) == 0


def test_scale_from_zero_serves_held_requests() -> None:
    trace = [TraceRequest(float(i), 500, 20) for i in range(20)]
    config = SimConfig(initial_replicas=0, cold_start=15, cold_start_jitter=0)
    spec_policy = make_policy("infleet", describe(trace, L4_8B, config), config, L4_8B)
    spec_policy.spec = type(spec_policy.spec)(min_replicas=0, max_replicas=4)  # type: ignore[attr-defined]
    result = simulate(trace, L4_8B, spec_policy, config)
    assert result.failed == 0
    first = min(r.first_token for r in result.requests)
    assert 15 <= first < 15 + 10 + 1  # one control interval plus the cold start


def test_arrivals_count_every_request_received_held_or_not() -> None:
    """The observation's arrival rate is the gateway's received requests over the arrival window, whether a replica
    took them or the gateway holds them (a fleet at zero); tokens/s served shows none of the held ones."""
    seen: list[FleetObservation] = []

    class Watch:
        name, interval = "watch", 10.0

        def desired(self, o: FleetObservation) -> int:
            seen.append(o)
            return 0

    trace = [TraceRequest(float(t), 500, 20) for t in range(60)]  # 1 request/s
    config = SimConfig(initial_replicas=0, hold_timeout=1000)
    simulate(trace, L4_8B, Watch(), config)
    at = {o.now: o for o in seen}
    assert at[30.0].arrivals_per_second == pytest.approx(15 / config.arrival_window, abs=1 / config.arrival_window)
    assert at[30.0].held > 0 and at[30.0].tokens_per_second == 0


def test_warmup_is_replayed_but_not_measured() -> None:
    trace = bursty_trace(n=300)
    config = SimConfig(warmup=120)
    result = simulate(trace, L4_8B, Static(3), config)
    assert len(result.measured) == 300 and len(result.requests) > 300
    assert result.gpu_seconds == pytest.approx(3 * (result.end - 120))


def test_kpa_panics_on_a_burst_and_does_not_scale_down_while_panicking() -> None:
    kpa = KPA(target_concurrency=10)

    def obs(now: float, stable: float, panic: float, replicas: int, ready: int) -> FleetObservation:
        return FleetObservation(now, replicas, ready, 0, 0, 0, 0.0, None, None, None, 0.0, stable, panic)

    assert kpa.desired(obs(0, 5, 5, 1, 1)) == 1
    burst = kpa.desired(obs(2, 8, 60, 1, 1))  # 60 in flight vs 7 per pod at 70%: 9 pods, over 2x the 1 ready
    assert burst == 9
    assert kpa.desired(obs(4, 8, 1, 9, 9)) == 9  # panic holds for the stable window
    assert kpa.desired(obs(70, 1, 1, 9, 9)) == 4  # after it, at most halving


# --- the command line ---------------------------------------------------------------------------------------
def test_simulate_command_writes_results_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.jsonl"
    rows = [{"arrival": r.arrival, "prompt_tokens": r.prompt_tokens, "output_tokens": r.output_tokens}
            for r in bursty_trace(n=200)]  # fmt: skip
    trace.write_text("\n".join(json.dumps(row) for row in rows))
    out = tmp_path / "out"
    rc = main(["simulate", "--trace", str(trace), "--policy", "all", "--gpu", "L4", "--warmup", "0", "--out", str(out)])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"infleet", "hpa-gpu-util", "keda-queue", "knative-kpa", "static-peak", "static-oracle"}
    for row in results.values():
        assert {"slo_attainment", "gpu_hours", "cost_per_million_tokens", "scale_events", "requests", "failed"} <= set(
            row
        )
        assert row["requests"] == 200 and math.isfinite(row["cost_per_million_tokens"])
    assert (out / "timeline_infleet.png").stat().st_size > 10_000 and (out / "replicas.png").exists()
    progress = capsys.readouterr().err.splitlines()  # one line per replay, the oracle's trials included
    assert len(progress) >= len(results) and all("replayed 200 requests" in line for line in progress)
    assert any(line.startswith("run 1: infleet") for line in progress)


def test_simulate_command_rejects_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--trace", str(tmp_path / "missing.csv")]) == 2
    assert "not found" in capsys.readouterr().err
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"arrival": 0, "prompt_tokens": 5, "output_tokens": 5}\n')
    assert main(["simulate", "--trace", str(trace), "--gpu", "TPU"]) == 2
    assert "unknown GPU" in capsys.readouterr().err
    assert main(["simulate", "--trace", str(trace), "--policy", "magic"]) == 2
