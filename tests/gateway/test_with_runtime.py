"""The gateway in front of two real runtime processes serving SmolLM2, driven by the official `openai` client.

The replicas start once for the module (about a minute on a shared CPU). The last test kills one of them, so it
stays last in this file.
"""

from __future__ import annotations

import concurrent.futures
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from infleet.cluster.testing import wait_for

from .conftest import free_port

pytestmark = [pytest.mark.model, pytest.mark.slow]

SERVED = "smollm2"


@pytest.fixture(scope="module")
def replicas() -> Iterator[list[Any]]:
    from infleet.runtime.loader.smollm2 import smollm2_gguf
    from infleet.runtime.server.launch import ServerProcess

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # two replicas on a shared 2-core machine
    servers = [ServerProcess(smollm2_gguf(), "--served-name", SERVED, "--max-model-len", "1024") for _ in range(2)]
    threads = [threading.Thread(target=s.start) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        for s in servers:  # a start that failed raised in its thread; check here
            assert s.process is not None and s.process.poll() is None, s.output()[-3000:]
            assert httpx.get(f"{s.url}/health", timeout=5).status_code == 200, s.output()[-3000:]
        yield servers
    finally:
        for s in servers:
            s.stop()


class GatewayProcess:
    """`python -m infleet.gateway run --upstream ...`: the real command, on a free port."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(f"/tmp/infleet-gateway-test-{self.port}.log")
        cmd = [sys.executable, "-m", "infleet.gateway", "run", "--host", "127.0.0.1", "--port", str(self.port), *args]
        self.process = subprocess.Popen(cmd, stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def gateway_for(replicas: list[Any], strategy: str) -> GatewayProcess:
    upstream = f"{SERVED}=" + ",".join(r.url for r in replicas)
    return GatewayProcess("--upstream", upstream, "--routing", strategy)


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)


def prefix_cache(replicas: list[Any]) -> tuple[float, float]:
    """(queries, hits) summed over the replicas, from the runtimes' own /metrics."""
    queries = hits = 0.0
    for r in replicas:
        text = httpx.get(f"{r.url}/metrics", timeout=10).text
        queries += sum(float(v) for v in re.findall(r"^infleet_prefix_cache_queries_total\{.*\} (\S+)$", text, re.M))
        hits += sum(float(v) for v in re.findall(r"^infleet_prefix_cache_hits_total\{.*\} (\S+)$", text, re.M))
    return queries, hits


def test_openai_client_through_the_gateway(replicas: list[Any]) -> None:
    gw = gateway_for(replicas, "leastOutstanding")
    try:
        c = client(gw.url)
        assert [m.id for m in c.models.list()] == [SERVED]
        chat = c.chat.completions.create(
            model=SERVED,
            messages=[{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
            max_tokens=8,
            temperature=0,
        )
        assert "Paris" in (chat.choices[0].message.content or "")
        deltas = []
        stream = c.chat.completions.create(
            model=SERVED,
            messages=[{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
            max_tokens=8,
            temperature=0,
            stream=True,
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                deltas.append(chunk.choices[0].delta.content)
        assert len(deltas) > 1 and "".join(deltas) == chat.choices[0].message.content
        completion = c.completions.create(model=SERVED, prompt="Once upon a time", max_tokens=4, temperature=0)
        assert completion.choices[0].text
        with pytest.raises(openai.NotFoundError) as missing:
            c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert f"'{SERVED}'" in str(missing.value)
    finally:
        gw.stop()


def test_prefix_affinity_raises_the_runtimes_prefix_cache_hit_rate(replicas: list[Any]) -> None:
    """Several tenants, each with its own long system prompt, each sending a few user questions. With prefix
    affinity a tenant's requests land where its system prompt's KV blocks already are; with least outstanding they
    alternate between replicas and each replica computes each system prompt once more."""
    results: dict[str, float] = {}
    for strategy in ("leastOutstanding", "prefixAffinity"):
        run = uuid.uuid4().hex[:8]  # fresh prompts: neither run profits from blocks the other left in the caches
        tenants = [
            f"[{run}-{t}] You are the support assistant of shop number {t}. "
            + f"Shop {t} sells bicycles, helmets, lights and locks; it opens at nine and closes at six. " * 4
            for t in range(5)
        ]
        questions = ["When do you open?", "Do you sell helmets?", "Where are you?"]
        order = [(system, question) for system in tenants for question in questions]
        random.Random(7).shuffle(order)  # users arrive in no particular order
        gw = gateway_for(replicas, strategy)
        try:
            c = client(gw.url)
            before = prefix_cache(replicas)
            for system, question in order:
                c.chat.completions.create(
                    model=SERVED,
                    messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
                    max_tokens=1,
                )
            after = prefix_cache(replicas)
        finally:
            gw.stop()
        queries, hits = after[0] - before[0], after[1] - before[1]
        assert queries > 0
        results[strategy] = hits / queries
    print(f"prefix-cache hit rate: {results}")
    assert results["prefixAffinity"] > results["leastOutstanding"] + 0.05, results


def test_killing_a_replica_under_load_loses_no_request_that_had_not_started_streaming(
    replicas: list[Any],
) -> None:
    """Requests in flight when one replica is SIGKILLed: unanswered ones are retried on the other replica; streams
    that had started end with an error event (the client raises), never a hang or a replay."""
    gw = gateway_for(replicas, "leastOutstanding")
    victim = replicas[1]
    try:
        c = client(gw.url)

        def plain(i: int) -> str:
            r = c.chat.completions.create(
                model=SERVED, messages=[{"role": "user", "content": f"Count to ten, {i}."}], max_tokens=24
            )
            return "ok" if r.choices[0].message.content is not None else "empty"

        def streamed(i: int) -> str:
            chunks = 0
            try:
                for _ in c.chat.completions.create(
                    model=SERVED,
                    messages=[{"role": "user", "content": f"Tell a story, {i}."}],
                    max_tokens=24,
                    stream=True,
                ):
                    chunks += 1
            except openai.APIError as e:
                assert chunks > 0, f"a stream that had not started failed: {e}"
                return "interrupted"
            return "ok"

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            # stream, stream, plain, plain, ...: least outstanding alternates replicas, so each gets both kinds
            kinds = [streamed if i % 4 < 2 else plain for i in range(12)]
            futures = [pool.submit(kind, i) for i, kind in enumerate(kinds)]
            wait_for(
                lambda: any("infleet_num_requests_running" in line and not line.endswith(" 0.0")
                            for line in httpx.get(f"{victim.url}/metrics").text.splitlines()
                            if not line.startswith("#")),
                timeout=120, interval=0.1, what="the victim replica to be generating",
            )  # fmt: skip
            victim.process.send_signal(signal.SIGKILL)
            outcomes = [f.result(timeout=600) for f in futures]
            # after the kill, new requests all succeed (the dead replica is retried around, then skipped)
            after = [pool.submit(plain, 100 + i) for i in range(4)]
            outcomes_after = [f.result(timeout=600) for f in after]
        print(f"outcomes: {outcomes}")
        assert all(o in ("ok", "interrupted") for o in outcomes)
        assert all(o == "ok" for o, kind in zip(outcomes, kinds, strict=True) if kind is plain)  # none lost
        assert outcomes_after == ["ok"] * 4
        metrics = httpx.get(f"{gw.url}/metrics").text
        retried = re.search(r"^infleet_gateway_retries_total\{.*\} (\S+)$", metrics, re.M)
        assert retried and float(retried[1]) >= 1  # the victim's unanswered requests went to the other replica
    finally:
        gw.stop()
