"""What the gateway costs: latency it adds (p50/p99) against calling a replica directly, and requests/s it sustains.

Two upstreams, each measured directly and through `infleet gateway run --upstream ...` (a real gateway process),
in alternating rounds so that drift on this shared machine hits both sides alike:

- `canned`: a tiny HTTP server answering a fixed chat completion; it isolates the gateway's own cost, and its
  requests/s is the most the gateway can pass on this machine;
- `runtime`: the real runtime serving SmolLM2 with `max_tokens=1` (the cheapest real request).

Sequential requests measure latency; a closed loop of `--concurrency` clients measures requests/s.

    python benchmarks/gateway.py [--upstreams canned runtime] [--requests 400] [--concurrency 16]
                                 [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

MODEL = "smollm2"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say yes."}], "max_tokens": 1, "temperature": 0}
CANNED = {
    "id": "chatcmpl-canned",
    "object": "chat.completion",
    "created": 0,
    "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "yes"}, "finish_reason": "length"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def serve_canned(port: int) -> None:
    """The canned upstream (run in its own process by this script)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    async def chat(request: Request) -> Response:
        await request.body()
        return JSONResponse(CANNED)

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/health", health)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


class Process:
    def __init__(self, cmd: list[str], url: str, timeout: float = 300) -> None:
        self.url = url
        self.log = Path(f"/tmp/infleet-bench-{url.rsplit(':', 1)[1]}.log")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, stdout=self.log.open("wb"), stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{cmd[:4]} exited:\n{self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{cmd[:4]} did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_upstream(kind: str) -> Process:
    port = free_port()
    if kind == "canned":
        cmd = [sys.executable, __file__, "--serve-canned", str(port)]
    else:
        from infleet.runtime.loader.smollm2 import smollm2_gguf

        cmd = [sys.executable, "-m", "infleet.runtime", "serve", "--model", str(smollm2_gguf()), "--served-name",
               MODEL, "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "512"]  # fmt: skip
    return Process(cmd, f"http://127.0.0.1:{port}")


def start_gateway(upstream: str) -> Process:
    port = free_port()
    cmd = [sys.executable, "-m", "infleet.gateway", "run", "--host", "127.0.0.1", "--port", str(port),
           "--upstream", f"{MODEL}={upstream}", "--log-level", "warning"]  # fmt: skip
    return Process(cmd, f"http://127.0.0.1:{port}", timeout=60)


async def sequential(url: str, n: int) -> list[float]:
    """Latency of `n` requests one after another (seconds)."""
    async with httpx.AsyncClient(timeout=120) as client:
        await client.post(f"{url}/v1/chat/completions", json=CHAT)  # warm the connection
        out = []
        for _ in range(n):
            t = time.perf_counter()
            r = await client.post(f"{url}/v1/chat/completions", json=CHAT)
            out.append(time.perf_counter() - t)
            r.raise_for_status()
        return out


async def closed_loop(url: str, n: int, concurrency: int) -> float:
    """Requests/s with `concurrency` clients each sending back to back until `n` are done."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        left = n

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                r = await client.post(f"{url}/v1/chat/completions", json=CHAT)
                r.raise_for_status()

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return n / (time.perf_counter() - t)


def quantile(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[int(q * 100) - 1] if len(xs) > 1 else xs[0]


def measure(kind: str, requests: int, concurrency: int, rounds: int) -> dict[str, Any]:
    upstream = start_upstream(kind)
    gateway = start_gateway(upstream.url)
    try:
        lat: dict[str, list[float]] = {"direct": [], "gateway": []}
        p50s: dict[str, list[float]] = {"direct": [], "gateway": []}
        rps: dict[str, list[float]] = {"direct": [], "gateway": []}
        load = [os.getloadavg()[0]]
        per_round = max(1, requests // rounds)
        for _ in range(rounds):  # alternate, so drift on the shared machine hits both sides alike
            for side, url in (("direct", upstream.url), ("gateway", gateway.url)):
                latencies = asyncio.run(sequential(url, per_round))
                lat[side] += latencies
                p50s[side].append(1000 * statistics.median(latencies))
                rps[side].append(asyncio.run(closed_loop(url, per_round, concurrency)))
            load.append(os.getloadavg()[0])
    finally:
        gateway.stop()
        upstream.stop()
    result: dict[str, Any] = {"requests": per_round * rounds, "concurrency": concurrency, "rounds": rounds}
    result["load_average"] = {"min": min(load), "max": max(load), "samples": load}
    for side in ("direct", "gateway"):
        result[side] = {
            "p50_ms": 1000 * quantile(lat[side], 0.50),
            "p99_ms": 1000 * quantile(lat[side], 0.99),
            "round_p50_ms": {"min": min(p50s[side]), "max": max(p50s[side]), "each": p50s[side]},
            "requests_per_second": statistics.median(rps[side]),
            "round_requests_per_second": {"min": min(rps[side]), "max": max(rps[side]), "each": rps[side]},
        }
    result["added_p50_ms"] = result["gateway"]["p50_ms"] - result["direct"]["p50_ms"]
    result["added_p99_ms"] = result["gateway"]["p99_ms"] - result["direct"]["p99_ms"]
    result["throughput_ratio"] = result["gateway"]["requests_per_second"] / result["direct"]["requests_per_second"]
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upstreams", nargs="+", choices=("canned", "runtime"), default=["canned", "runtime"])
    p.add_argument("--requests", type=int, default=400, help="per side and upstream (runtime: a quarter)")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--serve-canned", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_canned:
        serve_canned(args.serve_canned)
        return 0
    results = {}
    for kind in args.upstreams:
        n = args.requests if kind == "canned" else max(args.rounds, args.requests // 4)
        print(f"== {kind}: {n} requests per side, concurrency {args.concurrency}", flush=True)
        results[kind] = r = measure(kind, n, args.concurrency, args.rounds)
        d, g = r["direct"], r["gateway"]
        print(f"   {'':8} {'p50 ms':>9} {'p99 ms':>9} {'req/s':>9}")
        for side, v in (("direct", d), ("gateway", g)):
            lo, hi = v["round_requests_per_second"]["min"], v["round_requests_per_second"]["max"]
            print(
                f"   {side:8} {v['p50_ms']:9.2f} {v['p99_ms']:9.2f} {v['requests_per_second']:9.1f} ({lo:.0f}-{hi:.0f})"
            )
        print(
            f"   added latency p50 {r['added_p50_ms']:+.2f} ms, p99 {r['added_p99_ms']:+.2f} ms; "
            f"gateway/direct req/s {r['throughput_ratio']:.2f}x; load average "
            f"{r['load_average']['min']:.1f}-{r['load_average']['max']:.1f}",
            flush=True,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "gateway.json"
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out.write_text(json.dumps({"machine": f"{os.cpu_count()} cores, shared", "when": when, **results}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
