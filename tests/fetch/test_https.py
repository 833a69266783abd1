"""https:// (plain HTTP to a local server: the same httpx code path) resuming after a cut connection, a checksum
sidecar, two processes racing for one entry, and a pull killed half-way."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from infleet.runtime.fetch.cache import entry_name
from infleet.runtime.fetch.errors import Reason

BODY = bytes(range(256)) * 4096  # 1 MiB


class Server:
    """Serves /model.gguf with Range support and /model.gguf.sha256; `cut_once` drops the first GET half-way,
    `slow` trickles the body so that a test can kill the client mid-download; `bad_sidecar` publishes a wrong hash."""

    def __init__(self, cut_once: bool = False, slow: bool = False, bad_sidecar: bool = False) -> None:
        self.cut = cut_once
        self.slow = slow
        self.sidecar = ("0" * 64 if bad_sidecar else hashlib.sha256(BODY).hexdigest()).encode()
        self.gets: Counter[str] = Counter()
        self.ranges: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/model.gguf"

    def __enter__(self) -> Server:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                outer.gets[self.path] += 1
                if self.path.endswith(".sha256"):
                    body, status, start = outer.sidecar + b"  model.gguf\n", 200, 0
                else:
                    rng = self.headers.get("Range")
                    outer.ranges.append(rng or "")
                    start = int(rng.removeprefix("bytes=").rstrip("-")) if rng else 0
                    body, status = BODY[start:], (206 if rng else 200)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(BODY) - 1}/{len(BODY)}")
                self.end_headers()
                if outer.cut and status == 200 and not self.path.endswith(".sha256"):
                    outer.cut = False
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(2)  # the connection drops mid-body
                    return
                step = 64 * 1024 if outer.slow else len(body)
                for i in range(0, len(body), step):
                    self.wfile.write(body[i : i + step])
                    if outer.slow:
                        time.sleep(0.2)

        return Handler


def pull_cmd(url: str, cache: Path, *more: str) -> list[str]:
    return [sys.executable, "-m", "infleet.cli", "model", "pull", url, *more, "--cache", str(cache)]


def pull(url: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(pull_cmd(url, cache), capture_output=True, text=True, timeout=120)


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "cache"


def test_resumes_after_a_cut_connection(cache: Path) -> None:
    with Server(cut_once=True) as server:
        done = pull(server.url, cache)
    assert done.returncode == 0, done.stderr
    assert (Path(done.stdout.strip()) / "model.gguf").read_bytes() == BODY
    assert server.ranges[0] == "" and server.ranges[1] == f"bytes={len(BODY) // 2}-"


def test_sidecar_mismatch_is_rejected_and_leaves_nothing(cache: Path) -> None:
    with Server(bad_sidecar=True) as server:
        done = pull(server.url, cache)
    assert done.returncode == Reason.ChecksumMismatch.value, done.stderr
    assert done.stderr.splitlines()[-1].startswith("ChecksumMismatch: ")
    assert not (cache / entry_name(server.url, None)).exists()


def test_two_racing_pulls_download_once(cache: Path) -> None:
    with Server(slow=True) as server:
        procs = [subprocess.Popen(pull_cmd(server.url, cache), stdout=subprocess.PIPE, text=True) for _ in range(2)]
        outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs[0] == outs[1]
    assert server.gets["/model.gguf"] == 1
    assert (Path(outs[0]) / "model.gguf").read_bytes() == BODY


def test_a_killed_pull_is_never_complete_and_the_next_one_completes(cache: Path) -> None:
    with Server(slow=True) as server:
        proc = subprocess.Popen(pull_cmd(server.url, cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        partial = cache / f".partial-{entry_name(server.url, None)}" / "model.gguf"
        deadline = time.monotonic() + 60
        while not (partial.exists() and partial.stat().st_size > 0) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert partial.exists() and partial.stat().st_size < len(BODY)
        assert not (cache / entry_name(server.url, None)).exists()
        server.slow = False
        done = pull(server.url, cache)
    assert done.returncode == 0, done.stderr
    assert (Path(done.stdout.strip()) / "model.gguf").read_bytes() == BODY
    assert not partial.parent.exists()


def test_unreachable_store(cache: Path) -> None:
    done = pull("https://127.0.0.1:9/model.gguf", cache)
    assert done.returncode == Reason.StoreUnreachable.value, done.stderr


def test_the_fetcher_does_not_load_torch() -> None:
    code = "import sys, infleet.runtime.fetch.__main__; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_model_and_its_draft_are_pulled_in_order_and_a_failing_draft_fails_the_pull(cache: Path) -> None:
    with Server() as server:
        draft = server.url.replace("/model.gguf", "/draft/model.gguf")
        done = subprocess.run(
            [*pull_cmd(server.url, cache, draft), "--revision", "r1"], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        paths = [Path(line) for line in done.stdout.split()]
        # the revision is the first URI's; the draft's entry is its default revision's, as the operator expects
        assert paths == [cache / entry_name(server.url, "r1"), cache / entry_name(draft, None)]
        assert all((p / "model.gguf").read_bytes() == BODY for p in paths)
        failed = subprocess.run(
            pull_cmd(server.url, cache, "https://127.0.0.1:9/draft.gguf"),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert failed.returncode == Reason.StoreUnreachable.value, failed.stderr
