"""The built images, run with podman: the gateway image serves, the operator image reconciles on the local fleet,
both as their non-root user. `make test-images` builds them first (cluster/images.py); `make test` leaves these out.
"""

from __future__ import annotations

import base64
import json
import socket
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from infleet.cluster import images
from infleet.cluster.testing import FleetHandle, wait_for

pytestmark = pytest.mark.images


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module", params=["operator", "gateway"])
def image(request: pytest.FixtureRequest) -> str:
    name = images.tag(request.param)
    assert images.exists(name), f"{name} is not built: run `make images` first"
    return name


@pytest.fixture
def container() -> Iterator[list[str]]:
    """Names of containers a test starts; all removed afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        images.podman("rm", "--force", name, check=False, capture_output=True)


def run_detached(
    names: list[str], image: str, *args: str, volumes: tuple[str, ...] = (), env: tuple[str, ...] = ()
) -> str:
    name = f"infleet-test-{uuid.uuid4().hex[:8]}"
    names.append(name)
    options = [a for v in volumes for a in ("-v", v)] + [a for e in env for a in ("-e", e)]
    images.podman("run", "-d", "--name", name, "--network=host", *options, image, *args, capture_output=True)
    return name


def logs(name: str) -> str:
    proc = images.podman("logs", name, check=False, capture_output=True)
    return str(proc.stdout) + str(proc.stderr)


def wait_healthy(name: str, port: int, timeout: float) -> None:
    """Until the container's /health answers 200; on timeout, fail with the container's log."""

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    try:
        wait_for(healthy, timeout=timeout, what=f"/health of container {name}")
    except AssertionError as err:
        raise AssertionError(f"{err}\ncontainer log:\n{logs(name)}") from None


def get_json(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        body: dict[str, object] = json.loads(resp.read())
        return body


def test_image_runs_as_its_non_root_user(image: str) -> None:
    proc = images.podman("run", "--rm", "--entrypoint", "id", image, "-u", capture_output=True)
    assert proc.stdout.strip() == "10001"


def test_operator_and_gateway_images_hold_no_torch(image: str) -> None:
    proc = images.podman(
        "run", "--rm", "--entrypoint", "python", image, "-c", "import torch", check=False, capture_output=True
    )
    assert proc.returncode != 0 and "No module named 'torch'" in proc.stderr


def test_gateway_image_serves_health_and_models(container: list[str]) -> None:
    port = free_port()
    name = run_detached(
        container, images.tag("gateway"), "run", "--port", str(port), "--upstream", "smollm2=http://127.0.0.1:9"
    )
    wait_healthy(name, port, timeout=60)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
        assert resp.read() == b"ok"
    models = get_json(f"http://127.0.0.1:{port}/v1/models")
    assert [m["id"] for m in models["data"]] == ["smollm2"]  # type: ignore[index,union-attr]


def token_kubeconfig(fleet: FleetHandle, namespace: str, directory: Path) -> Path:
    """A kubeconfig the image's non-root user can read: a ServiceAccount token (bound to cluster-admin, as the
    test's operator watches one namespace but installs nothing of its own RBAC) and the CA inline."""
    sa = "image-operator"
    fleet.kubectl("create", "serviceaccount", sa, "-n", namespace)
    binding = f"{namespace}-{sa}"
    fleet.kubectl(
        "create", "clusterrolebinding", binding, "--clusterrole=cluster-admin", f"--serviceaccount={namespace}:{sa}"
    )
    token = fleet.kubectl("create", "token", sa, "-n", namespace, "--duration=1h").stdout.strip()
    server = fleet.kubectl("config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}").stdout
    ca = (fleet.kubeconfig.parent / "pki" / "ca.crt").read_bytes()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "fleet",
                "cluster": {"server": server, "certificate-authority-data": base64.b64encode(ca).decode()},
            }
        ],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": "fleet", "context": {"cluster": "fleet", "user": sa, "namespace": namespace}}],
        "current-context": "fleet",
    }
    path = directory / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o644)
    return path


def test_operator_image_reconciles_on_the_local_fleet(
    fleet: FleetHandle, namespace: str, container: list[str], tmp_path: Path
) -> None:
    fleet.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(images.ROOT / "crds"))
    kubeconfig = token_kubeconfig(fleet, namespace, tmp_path)
    health = free_port()
    name = run_detached(
        container,
        images.tag("operator"),
        "run",
        "--namespace",
        namespace,
        "--health-port",
        str(health),
        "--metrics-port",
        str(free_port()),
        volumes=(f"{kubeconfig}:/kube/config:ro",),
        env=("KUBECONFIG=/kube/config",),
    )
    deployment = {
        "apiVersion": "infleet.dev/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {"name": "from-image"},
        "spec": {
            "model": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct", "servedName": "smollm2"},
            "runtime": {"image": "registry.local/fake-runtime:1"},  # KWOK fakes the pod and marks it Ready
            "accelerator": {"type": "NVIDIA-L4"},
        },
    }
    fleet.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(deployment))

    def ready() -> bool:
        proc = fleet.kubectl("get", "idep", "from-image", "-n", namespace, "-o", "json", check=False)
        conditions = (json.loads(proc.stdout).get("status") or {}).get("conditions") or [] if proc.stdout else []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    try:
        wait_for(ready, timeout=180, what="the InferenceDeployment Ready under the operator image")
    except AssertionError as err:
        raise AssertionError(f"{err}\noperator container log:\n{logs(name)}") from None
    workload = json.loads(fleet.kubectl("get", "deployment", "from-image", "-n", namespace, "-o", "json").stdout)
    pod = workload["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True  # rendered by the image's own operator code


RUNTIME_CPU = images.tag("runtime-cpu")


@pytest.fixture(scope="module")
def runtime_image() -> str:
    assert images.exists(RUNTIME_CPU), f"{RUNTIME_CPU} is not built: run `make images` first"
    return RUNTIME_CPU


def test_runtime_cpu_image_computes_with_torch_and_carries_no_gpu_only_files(runtime_image: str) -> None:
    """torch imports and computes on the CPU; the files only a GPU opens (cuDNN engines, cuSOLVER) and the C
    compiler are not in the image, but the CPU decode attention kernel compiled at build time is, and loads; it runs
    as its non-root user."""
    probe = (
        "import json, pathlib, shutil, torch\n"
        "from infleet.runtime.kernels import dispatch\n"
        "nvidia = pathlib.Path(torch.__file__).parents[1] / 'nvidia'\n"
        "found = [*nvidia.glob('cudnn/lib/libcudnn_*'), *nvidia.glob('cu13/lib/libcusolver*')]\n"
        "gpu_only = sorted(p.name for p in found)\n"
        "x = torch.arange(6.0).reshape(2, 3)\n"
        "print(json.dumps({'gpu_only': gpu_only, 'gcc': shutil.which('gcc'), 'cuda': torch.cuda.is_available(),"
        " 'sum': float((x @ x.T).sum()), 'uid': __import__('os').getuid(),"
        " 'attention': dispatch.attention_backend(torch.device('cpu'))}))"
    )
    proc = images.podman("run", "--rm", "--entrypoint", "python", runtime_image, "-c", probe, capture_output=True)
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found == {
        "gpu_only": [],
        "gcc": None,
        "cuda": False,
        "sum": 83.0,
        "uid": 10001,
        "attention": "cpu-paged-decode (C), torch-sdpa prefill",
    }


def test_runtime_cpu_image_imports_its_entry_points(runtime_image: str) -> None:
    """The modules `python -m infleet.runtime` (and the model fetcher) load, imported inside the image itself
    (tests/chart/test_image_imports.py checks the same list against the COPY set without building)."""
    entry = ["infleet.runtime.__main__", "infleet.runtime.server.app", "infleet.runtime.parallel.launch"]
    code = "import importlib, sys\nfor n in sys.argv[1:]: importlib.import_module(n)\nprint('ok')"
    proc = images.podman(
        "run",
        "--rm",
        "--entrypoint",
        "python",
        runtime_image,
        "-c",
        code,
        *entry,
        "infleet.runtime.fetch.__main__",
        check=False,
        capture_output=True,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_runtime_cpu_image_serves_smollm2_to_the_openai_client(runtime_image: str, container: list[str]) -> None:
    """The image serves the SmolLM2 GGUF, mounted read-only, with a read-only root filesystem and /tmp writable
    (as the operator's pods run it), and answers a chat completion through the official `openai` client."""
    import openai

    from infleet.runtime.loader.smollm2 import smollm2_gguf

    gguf, port = smollm2_gguf(), free_port()
    name = f"infleet-test-{uuid.uuid4().hex[:8]}"
    container.append(name)
    images.podman(
        "run",
        "-d",
        "--name",
        name,
        "--network=host",
        "--read-only",
        "--tmpfs",
        "/tmp:rw,mode=1777",
        "-v",
        f"{gguf}:/models/smollm2.gguf:ro",
        "-e",
        "OMP_NUM_THREADS=2",
        runtime_image,
        "serve",
        "--model",
        "/models/smollm2.gguf",
        "--served-name",
        "smollm2",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        capture_output=True,
    )
    wait_healthy(name, port, timeout=600)
    api = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=300)
    answer = api.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
        max_tokens=16,
        temperature=0,
    )
    assert "Paris" in (answer.choices[0].message.content or ""), answer
