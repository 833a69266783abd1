"""A cascade on the fleet with two real models: SmolLM2 at int4 answers first, SmolLM2 at bf16 when int4 is unsure.
The gateway escalates by the threshold, names the model that answered in a header, Prometheus scrapes the cascade's
series, and `infleet cascade calibrate` prints the cost-quality curve and its choice on a labelled sample."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
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


def streamed_by(stack: Stack, model: str) -> list[str] | None:
    """A streamed request to the cascade through the `openai` client: the text of each chunk, when `model` answered."""
    client = openai.OpenAI(base_url=f"{stack.gateway_url()}/v1", api_key="unused", max_retries=0, timeout=300)
    raw = client.chat.completions.with_raw_response.create(
        model=CASCADE, messages=[{"role": "user", "content": "Say a random word."}], max_tokens=6, stream=True
    )
    pieces = [c.choices[0].delta.content or "" for c in raw.parse() if c.choices]
    return pieces if raw.headers[cascade.MODEL_HEADER] == model else None


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
    kept = wait_for(lambda: streamed_by(stack, SMALL), timeout=60, interval=1.0, what="int4 answering a stream")
    assert "".join(kept).strip()  # int4's whole answer, as stream events
    set_threshold(stack, 0.0)  # no answer's mean logprob reaches 0: every one escalates
    r = wait_for(
        lambda: answered_by(stack, BIG), timeout=120, interval=1.0, what="bf16 answering once the threshold is 0"
    )
    assert r.headers[cascade.ESCALATIONS_HEADER] == "1"
    pieces = wait_for(lambda: streamed_by(stack, BIG), timeout=60, interval=1.0, what="bf16 streaming")
    assert len(pieces) > 1 and "".join(pieces).strip(), pieces  # chunk by chunk as the runtime streams (a kept
    # answer is one chunk)

    def series(metric: str, by: str) -> dict[str, float]:
        query = f'sum by ({by}) ({metric}{{cascade="{CASCADE}"}})'
        found = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": query}, timeout=30).json()
        return {s["metric"].get("model", ""): float(s["value"][1]) for s in found["data"]["result"]}

    def counted() -> tuple[dict[str, float], dict[str, float]] | None:
        """Both series once every gateway replica that answered has been scraped (two replicas: the int4 answer and
        the escalation may have gone through different ones, scraped at different moments)."""
        escalated = series(names.CASCADE_ESCALATIONS, "model, reason")
        answered = series(names.CASCADE_REQUESTS, "model")
        ok = escalated.get(SMALL, 0) >= 1 and answered.get(SMALL, 0) >= 1 and answered.get(BIG, 0) >= 1
        return (escalated, answered) if ok else None

    escalated, _ = wait_for(counted, timeout=120, interval=2.0, what="the cascade's series in Prometheus")
    assert BIG not in escalated, escalated  # the last model in the cascade has nowhere to escalate to


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
