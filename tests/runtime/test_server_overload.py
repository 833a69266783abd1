"""Overload and shutdown on a deliberately small server (one running sequence, one waiting slot)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from infleet.runtime.server.launch import ServerProcess

pytestmark = pytest.mark.model

STORY = {"prompt": "Tell me a long story.", "ignore_eos": True, "stream": True}


@pytest.fixture(scope="module")
def small_server(smollm2_path) -> Iterator[ServerProcess]:
    server = ServerProcess(
        smollm2_path, "--max-num-seqs", "1", "--max-waiting", "1", "--max-model-len", "1024",
        "--served-name", "smollm2", "--shutdown-grace-seconds", "120",
    )  # fmt: skip
    with server:
        yield server


def waiting(url: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("infleet_num_requests_waiting{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("infleet_num_requests_waiting is not exported")


class Streamer(threading.Thread):
    """A streaming completion read on a thread; `started` is set at its first event."""

    def __init__(self, url: str, max_tokens: int) -> None:
        super().__init__(daemon=True)
        self.url, self.max_tokens = url, max_tokens
        self.started = threading.Event()
        self.stop = threading.Event()
        self.text: list[str] = []
        self.finish_reason: str | None = None
        self.status: int | None = None

    def run(self) -> None:
        body = {**STORY, "max_tokens": self.max_tokens}
        with httpx.stream("POST", f"{self.url}/v1/completions", json=body, timeout=300) as r:
            self.status = r.status_code
            for line in r.iter_lines():
                if self.stop.is_set():
                    return  # closing the stream aborts the request
                if line.startswith("data: {"):
                    choice = json.loads(line[6:])["choices"][0]
                    self.text.append(choice["text"])
                    self.finish_reason = choice["finish_reason"] or self.finish_reason
                    self.started.set()


def test_full_queue_is_429_with_retry_after_and_the_gauge_rises(small_server: ServerProcess) -> None:
    url = small_server.url
    running = Streamer(url, max_tokens=900)
    running.start()
    assert running.started.wait(120)
    queued: dict[str, httpx.Response] = {}

    def queue_one() -> None:
        queued["r"] = httpx.post(f"{url}/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=300)

    waiter = threading.Thread(target=queue_one)
    waiter.start()
    deadline = time.monotonic() + 60
    while waiting(url) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert waiting(url) == 1  # the gauge shows the queued request

    refused = httpx.post(f"{url}/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=60)
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"]["code"] == "queue_full"
    infer = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["Hi"]}]}
    refused_v2 = httpx.post(f"{url}/v2/models/smollm2/infer", json=infer, timeout=60)
    assert refused_v2.status_code == 429 and "waiting queue is full" in refused_v2.json()["error"]

    running.stop.set()  # the long request leaves; the queued one runs
    waiter.join(120)
    assert queued["r"].status_code == 200
    running.join(60)


def test_sigterm_drains_in_flight_then_exits_0(small_server: ServerProcess) -> None:
    url = small_server.url
    in_flight = Streamer(url, max_tokens=48)
    in_flight.start()
    assert in_flight.started.wait(120)
    small_server.signal()  # SIGTERM
    deadline = time.monotonic() + 30
    while httpx.get(f"{url}/health", timeout=10).status_code != 503 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert httpx.get(f"{url}/health", timeout=10).status_code == 503
    late = httpx.post(f"{url}/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=30)
    assert late.status_code == 503 and "Retry-After" in late.headers
    assert "shutting down" in late.json()["error"]["message"]
    assert httpx.get(f"{url}/v2/health/ready", timeout=10).status_code == 503

    in_flight.join(300)
    assert in_flight.status == 200 and in_flight.finish_reason == "length"  # it ran to its full budget
    assert small_server.wait(60) == 0
