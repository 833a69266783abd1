"""Each deployment observed and judged against its own SLO, scaled or not: two SmolLM2 deployments behind the
gateway, the same streamed traffic, one with `scaling.enabled` and loose targets, one without scaling and a TPOT
target no CPU reaches (1 ms per token). Within two minutes of traffic both show P99 TTFT, COST and SLO MET in
`kubectl get idep`; the scaled one meets its SLO, the unscaled one reports SLOMet False with a reason naming TPOT.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from infleet.cluster.stack import Stack
from infleet.cluster.testing import wait_for
from infleet.operator import api

from .conftest import DEMO_NAMESPACE, requires_autoscaler

pytestmark = [pytest.mark.cluster, pytest.mark.model, pytest.mark.slow]

SCALED, FIXED = "slo-scaled", "slo-fixed"
E2E = api.SLO.model_fields["e2e_p99"].alias or "e2eP99"  # the spec's spelling of the end-to-end target
COLUMNS = ("P99 TTFT", "COST", "SLO MET")
EMPTY = ("", "<none>")  # how kubectl shows a column whose field is not set


def get_idep(stack: Stack) -> dict[str, dict[str, str]]:
    """`kubectl get idep` as a user reads it: {name: {column: value}}."""
    lines = stack.kubectl("get", "idep", "-n", DEMO_NAMESPACE).splitlines()
    header = lines[0]
    starts = [header.index(c) for c in ("NAME", "READY", "REPLICAS", "TIER", *COLUMNS, "AGE")]
    names = ["NAME", "READY", "REPLICAS", "TIER", *COLUMNS, "AGE"]
    rows = {}
    for line in lines[1:]:
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        row = dict(zip(names, cells, strict=True))
        rows[row["NAME"]] = row
    return rows


def slo_met(stack: Stack, name: str) -> dict[str, Any]:
    status = stack.idep(DEMO_NAMESPACE, name).get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == "SLOMet"), {})


@pytest.fixture(scope="module")
def two_deployments(stack: Stack, smollm2: Callable[[str], dict[str, Any]]) -> Iterator[None]:
    requires_autoscaler(stack)
    scaled, fixed = smollm2(SCALED), smollm2(FIXED)
    scaled["spec"]["model"]["servedName"] = SCALED
    scaled["spec"]["slo"] = {"ttftP99": "60s", "tpotP99": "5s", "objectivePercent": 90}
    scaled["spec"]["scaling"] = {"enabled": True, "minReplicas": 1, "maxReplicas": 1}
    fixed["spec"]["model"]["servedName"] = FIXED
    fixed["spec"]["slo"] = {"ttftP99": "60s", "tpotP99": "1ms", E2E: "120s", "objectivePercent": 99}
    fixed["spec"]["scaling"] = {"enabled": False}
    stack.apply(scaled, fixed)
    try:
        stack.wait_ready(DEMO_NAMESPACE, SCALED, quiet=True)
        stack.wait_ready(DEMO_NAMESPACE, FIXED, quiet=True)
        yield
    finally:
        stack.kubectl("delete", "idep", SCALED, FIXED, "-n", DEMO_NAMESPACE, "--wait=false")


def test_both_show_their_figures_and_each_is_judged_on_its_own_slo(stack: Stack, two_deployments: None) -> None:
    before = get_idep(stack)
    for name in (SCALED, FIXED):  # no traffic yet: nothing observed
        assert before[name]["P99 TTFT"] in EMPTY, before[name]
    client = openai.OpenAI(base_url=f"{stack.gateway_url()}/v1", api_key="unused", max_retries=0, timeout=300)
    stop = threading.Event()
    answered: dict[str, int] = {SCALED: 0, FIXED: 0}
    failures: list[str] = []

    def chat(model: str) -> None:  # streamed, so the gateway times every token (TTFT and TPOT)
        while not stop.is_set():
            try:
                chunks = client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": "Tell me about bread."}],
                    max_tokens=24,
                    stream=True,
                )
                if "".join(c.choices[0].delta.content or "" for c in chunks if c.choices):
                    answered[model] += 1
            except openai.APIError as err:  # reported below; the traffic goes on
                failures.append(f"{model}: {err}")
            stop.wait(1)

    threads = [threading.Thread(target=chat, args=(name,), daemon=True) for name in (SCALED, FIXED)]
    for t in threads:
        t.start()
    try:
        # the acceptance bound: the operator observes every 15 s, Prometheus scrapes every 5 s
        rows = wait_for(
            lambda: (
                (r := get_idep(stack)) and all(r[n][c] not in EMPTY for n in (SCALED, FIXED) for c in COLUMNS) and r
            ),
            timeout=120,
            interval=5,
            what="P99 TTFT, COST and SLO MET for both deployments in `kubectl get idep`",
        )
        print(f"kubectl get idep: {rows}; answered {answered}, failed {failures[:5]}")
        fixed = wait_for(
            lambda: (c := slo_met(stack, FIXED)).get("status") == "False" and c,
            timeout=120,
            interval=5,
            what=f"{FIXED}'s SLOMet to turn False",
        )
        assert "TPOT" in fixed["reason"] and "TPOT" in fixed["message"], fixed
        scaled = wait_for(
            lambda: (c := slo_met(stack, SCALED)).get("status") in ("True", "False") and c,
            timeout=120,
            interval=5,
            what=f"{SCALED}'s SLOMet to be judged",
        )
        assert (scaled["status"], scaled["reason"]) == ("True", "TargetsMet"), scaled
        for name in (SCALED, FIXED):  # exact counts, not the p99 fallback (the gateway's series start at 0)
            observed = wait_for(
                lambda n=name: "attainmentPercent" in (o := stack.idep(DEMO_NAMESPACE, n)["status"]["observed"]) and o,
                timeout=60,
                interval=5,
                what=f"{name}'s attainment from the gateway's counts",
            )
            assert observed["attainmentPercent"]["ttft"] == 100.0, (name, observed)  # a 60 s TTFT is always met
        fixed_observed = stack.idep(DEMO_NAMESPACE, FIXED)["status"]["observed"]
        assert fixed_observed["attainmentPercent"]["tpot"] < 99, fixed_observed
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=300)
    assert all(answered.values()), (answered, failures[:5])
