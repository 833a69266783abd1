"""How long a runtime pod takes to start on the local fleet: host processes (the default) beside podman containers
of the built images (`infleet cluster up --pods containers`).

The same pod both ways: the pod template the operator renders for examples/smollm2-l4.yaml (the `model-fetch` init
container pulls the GGUF from the fleet's object store into an emptyDir, then the runtime serves it), created as a
bare Pod whose `infleet.dev/local-pods` annotation picks the mode. Timed from the create call to the pod's Ready
condition (the runtime's readiness probe passed), then the pod is deleted and gone before the next one. Modes
alternate within each round, and the first mode alternates between rounds; median and min-max per mode, with the
load average before and after. Needs a running fleet (`infleet cluster up`, either mode) and `make images`.

    python benchmarks/pod_start.py [--repeats 3] [--out benchmarks/results/pod_start.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from infleet.cluster import containers, images, objectstore
from infleet.cluster.controlplane import Fleet
from infleet.cluster.stack import EXAMPLE, Stack
from infleet.operator import api, resources
from infleet.runtime.loader.smollm2 import smollm2_gguf

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "bench-pod-start"


def runtime_pod(name: str, mode: str) -> dict[str, Any]:
    """The example's runtime pod, as the operator's Deployment would create it, in `mode`."""
    example = yaml.safe_load(EXAMPLE.read_text())
    spec = api.InferenceDeploymentSpec.model_validate(example["spec"])
    owner = resources.Owner(name=name, namespace=NAMESPACE, uid="")
    tier = spec.quantization.tier
    template = resources.pod_template(spec, owner, tier, resources.layout(spec, spec.accelerator.gpus_per_node))
    template["metadata"]["annotations"][containers.MODE_ANNOTATION] = mode
    return {"apiVersion": "v1", "kind": "Pod", **template, "metadata": {**template["metadata"], "name": name}}


def ready(pod: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


def start_once(core: client.CoreV1Api, name: str, mode: str, timeout: float = 600) -> float:
    body = runtime_pod(name, mode)
    started = time.monotonic()
    core.create_namespaced_pod(NAMESPACE, body)
    try:
        while time.monotonic() - started < timeout:
            if ready(core.read_namespaced_pod(name, NAMESPACE)):
                return time.monotonic() - started
            time.sleep(0.2)
        raise TimeoutError(f"{name} ({mode}) not Ready after {timeout:.0f}s")
    finally:
        core.delete_namespaced_pod(name, NAMESPACE, grace_period_seconds=5)
        while True:
            try:
                core.read_namespaced_pod(name, NAMESPACE)
            except ApiException as err:
                if err.status == 404:
                    break
                raise
            time.sleep(0.5)


def summary(seconds: list[float]) -> dict[str, Any]:
    return {
        "median_s": round(statistics.median(seconds), 2),
        "min_s": round(min(seconds), 2),
        "max_s": round(max(seconds), 2),
        "runs_s": [round(s, 2) for s in seconds],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pod_start.json")
    args = parser.parse_args()
    fleet = Fleet()
    if not all(s == "running" for s in fleet.status().values()):
        raise SystemExit("pod_start: no running fleet here: start one with `infleet cluster up` first")
    missing = [images.tag(n) for n in ("runtime-cpu",) if not images.exists(images.tag(n))]
    if missing:
        raise SystemExit(f"pod_start: {', '.join(missing)} not built: run `make images` first")
    core = client.CoreV1Api(config.new_client_from_config(str(fleet.kubeconfig)))
    stack = Stack.on_fleet(fleet)
    stack.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    objectstore.seed(fleet, smollm2_gguf())
    stack.model_store_secret(fleet, NAMESPACE)
    os.environ["AWS_ENDPOINT_URL"] = objectstore.endpoint_for_pods(fleet)  # what the chart gives the operator

    load_before = os.getloadavg()
    times: dict[str, list[float]] = {m: [] for m in containers.MODES}
    for i in range(args.repeats):
        order = containers.MODES if i % 2 == 0 else tuple(reversed(containers.MODES))
        for mode in order:
            seconds = start_once(core, f"start-{mode[:4]}-{i}", mode)
            times[mode].append(seconds)
            print(f"round {i + 1}: {mode:<10} {seconds:6.1f}s to Ready", flush=True)
    result = {
        "what": "runtime pod (examples/smollm2-l4.yaml template: model-fetch + runtime), create to Ready",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "image": images.tag("runtime-cpu"),
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        **{mode: summary(seconds) for mode, seconds in times.items()},
    }
    result["containers_over_processes"] = round(result["containers"]["median_s"] / result["processes"]["median_s"], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
