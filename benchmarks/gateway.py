"""What the gateway costs: latency it adds (p50/p99) against calling a replica directly, and requests/s it sustains,
beside nginx configured as a plain reverse proxy (one worker, keep-alive to the upstream) measured in the same run.

Two upstreams, each measured directly, through `infleet gateway run --upstream ...` (a real gateway process, one
worker) and through nginx, in interleaved rounds (the order rotates each round) so that drift on this shared machine
hits every side alike:

- `canned`: a tiny HTTP server answering a fixed chat completion; it isolates the gateway's own cost, and its
  requests/s is the most the gateway can pass on this machine;
- `runtime`: the real runtime serving SmolLM2 with `max_tokens=1` (the cheapest real request).

Sequential requests measure latency; a closed loop of `--concurrency` clients measures requests/s, and the CPU time
the gateway's (or nginx's) processes spent on it, per request: a figure that other load on the machine barely moves,
unlike the latencies. The goals
(at most 1 ms p50 and 3 ms p99 added, at least 0.9x direct requests/s) are judged by `goals()` on each upstream and
written beside the figures. Without nginx on PATH the proxy side is skipped with a message (`make bench-gateway`
installs it).

    python benchmarks/gateway.py [--upstreams canned runtime] [--requests 400] [--concurrency 16]
                                 [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

MODEL = "smollm2"
GOALS = {"added_p50_ms": 1.0, "added_p99_ms": 3.0, "throughput_ratio": 0.9}  # at most, at most, at least
NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  upstream replicas {{ server {upstream}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://replicas;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"""
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
    def __init__(self, cmd: list[str], url: str, timeout: float = 300, health: str = "/health") -> None:
        self.url = url
        self.log = Path(f"/tmp/infleet-bench-{url.rsplit(':', 1)[1]}.log")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, stdout=self.log.open("wb"), stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{cmd[:4]} exited:\n{self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}{health}", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{cmd[:4]} did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.2)

    def cpu_seconds(self) -> float:
        """User and system CPU time of the process and its children (nginx's worker) so far."""
        procs = [psutil.Process(self.proc.pid)]
        procs += procs[0].children(recursive=True)
        return sum(t.user + t.system for t in (p.cpu_times() for p in procs))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM if self.proc.args[0].endswith("nginx") else signal.SIGINT)
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


def start_nginx(upstream: str) -> Process | None:
    """nginx as a plain reverse proxy in front of `upstream`, or None (with a message) when it is not installed."""
    nginx = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    if nginx is None:
        print("   nginx not found: the reverse-proxy side is skipped (`make bench-gateway` installs it)", flush=True)
        return None
    port, workdir = free_port(), tempfile.mkdtemp(prefix="infleet-bench-nginx-")
    conf = Path(workdir, "nginx.conf")
    conf.write_text(NGINX_CONF.format(dir=workdir, upstream=upstream.removeprefix("http://"), port=port))
    return Process(
        [nginx, "-p", workdir, "-c", str(conf), "-e", f"{workdir}/error.log"], f"http://127.0.0.1:{port}", 30
    )


def goals(result: dict[str, Any], cores: int | None = os.cpu_count()) -> dict[str, dict[str, Any]]:
    """Each goal with its measured value and whether it was met: True, False, or None (not judged) when the load
    average went above the machine's cores, where the sides' differences are other processes' noise."""
    busy = result["load_average"]["max"] > (cores or 1)
    out = {}
    for key, bound in GOALS.items():
        value = result[key]
        met = None if busy else (value >= bound if key == "throughput_ratio" else value <= bound)
        out[key] = {"goal": (">= " if key == "throughput_ratio" else "<= ") + str(bound), "value": value, "met": met}
        if busy:
            out[key]["why_not_judged"] = f"load average up to {result['load_average']['max']:.1f} on {cores} cores"
    return out


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
    procs = [upstream]
    try:
        procs.append(gateway := start_gateway(upstream.url))
        sides = {"direct": upstream.url, "gateway": gateway.url}
        if proxy := start_nginx(upstream.url):
            procs.append(proxy)
            sides["nginx"] = proxy.url
        lat: dict[str, list[float]] = {side: [] for side in sides}
        p50s: dict[str, list[float]] = {side: [] for side in sides}
        rps: dict[str, list[float]] = {side: [] for side in sides}
        cpu: dict[str, float] = {side: 0.0 for side in sides}
        by_side = {"direct": upstream, "gateway": gateway, **({"nginx": proxy} if proxy else {})}
        load = [os.getloadavg()[0]]
        per_round = max(1, requests // rounds)
        order = list(sides)
        for r in range(rounds):  # interleaved, the order rotating, so drift on the shared machine hits all alike
            for side in order[r % len(order) :] + order[: r % len(order)]:
                latencies = asyncio.run(sequential(sides[side], per_round))
                lat[side] += latencies
                p50s[side].append(1000 * statistics.median(latencies))
                before = by_side[side].cpu_seconds()
                rps[side].append(asyncio.run(closed_loop(sides[side], per_round, concurrency)))
                cpu[side] += by_side[side].cpu_seconds() - before
            load.append(os.getloadavg()[0])
    finally:
        for proc in reversed(procs):
            proc.stop()
    result: dict[str, Any] = {"requests": per_round * rounds, "concurrency": concurrency, "rounds": rounds}
    result["load_average"] = {"min": min(load), "max": max(load), "samples": load}
    for side in sides:
        result[side] = {
            "p50_ms": 1000 * quantile(lat[side], 0.50),
            "p99_ms": 1000 * quantile(lat[side], 0.99),
            "round_p50_ms": {"min": min(p50s[side]), "max": max(p50s[side]), "each": p50s[side]},
            "requests_per_second": statistics.median(rps[side]),
            "round_requests_per_second": {"min": min(rps[side]), "max": max(rps[side]), "each": rps[side]},
            # the upstream's own CPU for "direct"; the proxy process's alone for the others (the upstream's excluded)
            "cpu_ms_per_request": 1000 * cpu[side] / (per_round * rounds),
        }
    for side, prefix in (("gateway", ""), ("nginx", "nginx_")):
        if side in result:
            result[f"{prefix}added_p50_ms"] = result[side]["p50_ms"] - result["direct"]["p50_ms"]
            result[f"{prefix}added_p99_ms"] = result[side]["p99_ms"] - result["direct"]["p99_ms"]
            ratio = result[side]["requests_per_second"] / result["direct"]["requests_per_second"]
            result[f"{prefix}throughput_ratio"] = ratio
    if "nginx" not in result:
        result["nginx"] = {"skipped": "nginx not installed"}
    result["goals"] = goals(result)
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
        print(f"   {'':8} {'p50 ms':>9} {'p99 ms':>9} {'req/s':>9}")
        for side in ("direct", "gateway", "nginx"):
            v = r[side]
            if "skipped" in v:
                continue
            lo, hi = v["round_requests_per_second"]["min"], v["round_requests_per_second"]["max"]
            print(
                f"   {side:8} {v['p50_ms']:9.2f} {v['p99_ms']:9.2f} {v['requests_per_second']:9.1f} ({lo:.0f}-{hi:.0f})"
                f"  {v['cpu_ms_per_request']:.3f} CPU ms/request"
            )
        print(
            f"   added latency p50 {r['added_p50_ms']:+.2f} ms, p99 {r['added_p99_ms']:+.2f} ms; "
            f"gateway/direct req/s {r['throughput_ratio']:.2f}x; load average "
            f"{r['load_average']['min']:.1f}-{r['load_average']['max']:.1f}",
            flush=True,
        )
        if "nginx_added_p50_ms" in r:
            print(
                f"   nginx: added p50 {r['nginx_added_p50_ms']:+.2f} ms, p99 {r['nginx_added_p99_ms']:+.2f} ms, "
                f"{r['nginx_throughput_ratio']:.2f}x direct req/s"
            )
        for key, g in r["goals"].items():
            verdict = {True: "met", False: "NOT met", None: f"not judged ({g.get('why_not_judged')})"}[g["met"]]
            print(f"   goal {key} {g['goal']}: {g['value']:.2f} -> {verdict}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "gateway.json"
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out.write_text(json.dumps({"machine": f"{os.cpu_count()} cores, shared", "when": when, **results}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
