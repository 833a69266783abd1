"""How the operator scales: N InferenceDeployments on a 1,000-node simulated fleet.

Brings up its own throwaway fleet (separate directory, ports and CIDRs, so a running fleet is left alone), installs
the CRDs, starts the operator as a subprocess, creates N deployments at once (single-GPU replicas spread over the
H100 and A100 pools, a non-infleet image so KWOK fakes the pods) and reports:

- seconds until every deployment is Ready (status condition), and until the first one is;
- Kubernetes API requests the operator sent, per reconcile and per deployment (its own counters);
- the operator's peak resident memory (VmHWM) and its memory at the end (VmRSS);
- the reconcile duration histogram's mean.

    python benchmarks/operator_scale.py --counts 100 1000 [--nodes 1000] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

ROOT = Path(__file__).resolve().parents[1]
PRODUCTS = ("NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-80GB")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fleet_env(directory: Path, port_base: int) -> dict[str, str]:
    return {
        **os.environ,
        "INFLEET_FLEET_DIR": str(directory),
        "INFLEET_FLEET_PORT_BASE": str(port_base),
        "INFLEET_SERVICE_CIDR": "127.95.0.0/16",
        "INFLEET_KWOK_POD_CIDR": "127.62.0.0/16",
        "INFLEET_LAUNCHED_POD_CIDR": "127.63.0.0/16",
    }


def kubectl(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    from infleet.cluster import build

    cmd = [str(build.binaries().kubectl), f"--kubeconfig={env['KUBECONFIG']}", *args]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=600)
    if proc.returncode:
        raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr}")
    return proc.stdout


def scrape(port: int) -> dict[str, float]:
    """Sum every sample of each metric family (labels dropped)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    sums: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ([0-9.eE+-]+|NaN)$", line)
        if m and not line.startswith("#"):
            sums[m.group(1)] = sums.get(m.group(1), 0.0) + float(m.group(3))
    return sums


def memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def idep(name: str, i: int) -> dict[str, Any]:
    return {
        "apiVersion": "infleet.dev/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
            "runtime": {"image": "registry.local/fake-runtime:1"},
            "accelerator": {"type": PRODUCTS[i % len(PRODUCTS)]},
            "quantization": {"tier": "bf16"},
            "replicas": 1,
        },
    }


def run_one(env: dict[str, str], count: int, log_dir: Path) -> dict[str, Any]:
    core = client.CoreV1Api(config.new_client_from_config(env["KUBECONFIG"]))
    custom = client.CustomObjectsApi(core.api_client)
    ns = f"scale-{count}-{os.getpid()}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    metrics_port, health_port = free_port(), free_port()
    log = (log_dir / f"operator-{count}.log").open("wb")
    cmd = [sys.executable, "-m", "infleet.operator", "run", "--namespace", ns]
    cmd += ["--metrics-port", str(metrics_port), "--health-port", str(health_port)]
    op = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or op.poll() is not None:
                    raise RuntimeError(f"operator did not become healthy; see {log.name}") from None
                time.sleep(0.2)
        base = scrape(metrics_port)
        docs = yaml.safe_dump_all([idep(f"d{i:04d}", i) for i in range(count)])
        start = time.monotonic()
        kubectl(env, "apply", "-n", ns, "-f", "-", stdin=docs)
        created = time.monotonic() - start
        first_ready: float | None = None
        peak = 0
        while True:
            items = custom.list_namespaced_custom_object("infleet.dev", "v1alpha1", ns, "inferencedeployments")["items"]
            ready = sum(
                any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in (i.get("status") or {}).get("conditions", [])
                )
                for i in items
            )
            peak = max(peak, memory_kib(op.pid).get("VmRSS", 0))
            if ready and first_ready is None:
                first_ready = time.monotonic() - start
            if ready == count:
                break
            if time.monotonic() - start > 1800:
                raise RuntimeError(f"only {ready}/{count} Ready after 30 minutes")
            time.sleep(1.0)
        all_ready = time.monotonic() - start
        time.sleep(5)  # let trailing status events settle before reading the counters
        after = scrape(metrics_port)
        mem = memory_kib(op.pid)
        requests = after.get("infleet_operator_api_requests_total", 0) - base.get(
            "infleet_operator_api_requests_total", 0
        )
        reconciles = after.get("infleet_operator_reconcile_total", 0) - base.get("infleet_operator_reconcile_total", 0)
        seconds = after.get("infleet_operator_reconcile_duration_seconds_sum", 0) - base.get(
            "infleet_operator_reconcile_duration_seconds_sum", 0
        )
        return {
            "deployments": count,
            "apply_seconds": round(created, 2),
            "first_ready_seconds": round(first_ready or 0.0, 2),
            "all_ready_seconds": round(all_ready, 2),
            "reconciles": int(reconciles),
            "api_requests": int(requests),
            "api_requests_per_reconcile": round(requests / max(reconciles, 1), 2),
            "api_requests_per_deployment": round(requests / count, 2),
            "mean_reconcile_ms": round(1000 * seconds / max(reconciles, 1), 2),
            "operator_rss_mib": round(mem.get("VmRSS", 0) / 1024, 1),
            "operator_peak_rss_mib": round(max(mem.get("VmHWM", 0), peak) / 1024, 1),
        }
    finally:
        op.send_signal(signal.SIGTERM)
        try:
            op.wait(timeout=20)
        except subprocess.TimeoutExpired:
            op.kill()
        log.close()
        core.delete_namespace(ns)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--port-base", type=int, default=18000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--keep", action="store_true", help="leave the fleet running afterwards")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    directory = Path(os.environ.get("INFLEET_BENCH_FLEET_DIR", "/tmp/infleet-operator-scale"))
    directory.mkdir(parents=True, exist_ok=True)
    env = fleet_env(directory, args.port_base)
    env["KUBECONFIG"] = str(directory / "kubeconfig")
    print(f"== fleet of {args.nodes} nodes in {directory}")
    t = time.monotonic()
    up = subprocess.run([sys.executable, "-m", "infleet.cluster", "up", "--nodes", str(args.nodes)], env=env)
    if up.returncode:
        return up.returncode
    print(f"   up in {time.monotonic() - t:.1f}s")
    results = []
    try:
        kubectl(env, "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
        kubectl(env, "wait", "--for=condition=Established", "crd/inferencedeployments.infleet.dev")
        for count in args.counts:
            print(f"== {count} InferenceDeployments")
            result = run_one(env, count, args.out)
            results.append(result)
            print("   " + json.dumps(result))
    finally:
        if not args.keep:
            subprocess.run([sys.executable, "-m", "infleet.cluster", "down"], env=env)
    report = {"nodes": args.nodes, "cpus": os.cpu_count(), "runs": results}
    path = args.out / "operator_scale.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{'deployments':>11} {'all Ready s':>11} {'req/reconcile':>13} {'req/deploy':>10} {'peak RSS MiB':>12}")
    for r in results:
        print(
            f"{r['deployments']:>11} {r['all_ready_seconds']:>11} {r['api_requests_per_reconcile']:>13} "
            f"{r['api_requests_per_deployment']:>10} {r['operator_peak_rss_mib']:>12}"
        )
    if len(results) > 1:
        a, b = results[0], results[-1]
        print(
            f"\n{b['deployments'] / a['deployments']:.0f}x the deployments took "
            f"{b['all_ready_seconds'] / max(a['all_ready_seconds'], 1e-9):.1f}x the time "
            f"and {b['operator_peak_rss_mib'] / max(a['operator_peak_rss_mib'], 1e-9):.2f}x the memory"
        )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
