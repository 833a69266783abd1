"""A cascade on the fleet with two real models: SmolLM2 at int4 answers first, SmolLM2 at bf16 when int4 is unsure.
The gateway escalates by the threshold, names the model that answered in a header, Prometheus scrapes the cascade's
series, and `infleet cascade calibrate` prints the cost-quality curve and its choice on a labelled sample."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from infleet.api import metrics as names
from infleet.cluster.stack import Stack
from infleet.cluster.testing import wait_for
from infleet.gateway import calibrate, cascade

from .conftest import DEMO_NAMESPACE

CASCADE = "smollm2-auto"
SMALL, BIG = "smollm2-int4", "smollm2-bf16"
PRICES = {SMALL: 0.05, BIG: 0.20}  # $ per 1M tokens, for the calibration's arithmetic
SAMPLE = [
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Italy?", "Rome"),
    ("What is the capital of Germany?", "Berlin"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What colour is the sky on a clear day?", "blue"),
    ("How many days are in a week?", "seven"),
]


def cascade_spec(threshold: float) -> dict[str, Any]:
    return {"name": CASCADE, "escalateTo": [BIG], "minMeanLogprob": threshold}


@pytest.fixture(scope="module")
def pair(stack: Stack, smollm2: Callable[[str], dict[str, Any]]) -> Iterator[None]:
    small, big = smollm2(SMALL), smollm2(BIG)
    for idep, tier in ((small, "int4"), (big, "bf16")):
        idep["spec"]["model"]["servedName"] = idep["metadata"]["name"]
        idep["spec"]["quantization"] = {"tier": tier}
    small["spec"]["gateway"] = {"cascade": cascade_spec(-100.0)}
    stack.apply(small, big)
    try:
        for name in (SMALL, BIG):
            stack.wait_ready(DEMO_NAMESPACE, name, timeout=600, quiet=True)
        yield
    finally:
        stack.kubectl("delete", "idep", SMALL, BIG, "-n", DEMO_NAMESPACE, "--timeout=300s")  # gone for what follows


def set_threshold(stack: Stack, threshold: float) -> None:
    patch = json.dumps({"spec": {"gateway": {"cascade": cascade_spec(threshold)}}})
    stack.kubectl("patch", "idep", SMALL, "-n", DEMO_NAMESPACE, "--type=merge", "-p", patch)


def ask(stack: Stack) -> httpx.Response:
    request = {"model": CASCADE, "messages": [{"role": "user", "content": "Say a random word."}], "max_tokens": 6}
    r = httpx.post(f"{stack.gateway_url()}/v1/chat/completions", json=request, timeout=300)
    assert r.status_code == 200, r.text
    return r


def answered_by(stack: Stack, model: str) -> httpx.Response | None:
    r = ask(stack)
    return r if r.headers[cascade.MODEL_HEADER] == model else None


def test_the_threshold_decides_who_answers_and_prometheus_counts_it(
    stack: Stack, pair: None, prometheus_url: str
) -> None:
    r = wait_for(
        lambda: answered_by(stack, SMALL),
        timeout=120,
        interval=1.0,
        what="int4 answering at a threshold it always meets",
    )
    assert r.headers[cascade.ESCALATIONS_HEADER] == "0" and r.json()["choices"][0]["message"]["content"]
    assert r.json()["choices"][0]["logprobs"] is None  # the gateway's own ask, hidden from the client
    set_threshold(stack, 0.0)  # no answer's mean logprob reaches 0: every one escalates
    r = wait_for(
        lambda: answered_by(stack, BIG), timeout=120, interval=1.0, what="bf16 answering once the threshold is 0"
    )
    assert r.headers[cascade.ESCALATIONS_HEADER] == "1"

    def counted() -> dict[str, float] | None:
        query = f'sum by (model, reason) ({names.CASCADE_ESCALATIONS}{{cascade="{CASCADE}"}})'
        found = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": query}, timeout=30).json()
        series = {s["metric"].get("model", ""): float(s["value"][1]) for s in found["data"]["result"]}
        return series if series.get(SMALL, 0) >= 1 else None

    assert wait_for(counted, timeout=120, interval=2.0, what="the escalation series in Prometheus")[SMALL] >= 1
    query = f'sum by (model) ({names.CASCADE_REQUESTS}{{cascade="{CASCADE}"}})'
    found = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": query}, timeout=30).json()
    by_model = {s["metric"]["model"]: float(s["value"][1]) for s in found["data"]["result"]}
    assert by_model.get(SMALL, 0) >= 1 and by_model.get(BIG, 0) >= 1, by_model


def test_calibrate_prints_the_curve_and_its_choice(
    stack: Stack, pair: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sample = tmp_path / "sample.jsonl"
    lines = [json.dumps({"messages": [{"role": "user", "content": q}], "expected": a}) for q, a in SAMPLE]
    sample.write_text("\n".join(lines))
    out = tmp_path / "curve.json"
    prices = [f"--price={m}={p}" for m, p in PRICES.items()]
    argv = ["calibrate", "--url", f"{stack.gateway_url()}/v1", "--models", SMALL, BIG, *prices]
    assert calibrate.main([*argv, "--sample", str(sample), "--max-tokens", "12", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    print(printed)
    result = json.loads(out.read_text())
    curve = result["curve"]
    assert curve[0]["threshold"] is None and curve[0]["escalation_rate"] == 0  # int4 alone
    assert curve[-1]["threshold"] == 0.0 and curve[-1]["escalation_rate"] == 1  # every answer escalated
    assert curve[-1]["relative_cost"] > 1  # paying for both models on every request costs more than bf16 alone
    assert result["chosen"]["accuracy"] >= result["target_accuracy"]
    assert "<- chosen" in printed and "minMeanLogprob" in printed
