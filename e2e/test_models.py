"""Remote models on the local fleet, pulled by the pods' model-fetch init container into their cache (docs/models.md):
- over HTTP, and from the fleet's S3 object store with the shipped SmolLM2 example, then served;
- S3's wrong key and missing key as ModelReady reasons;
- the shipped examples whose stores this machine cannot reach explaining themselves in ModelReady, instead of an
  unexplained Init:CrashLoopBackOff."""

from __future__ import annotations

import functools
import http.server
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import openai
import pytest
import yaml

from infleet.api import metrics as names
from infleet.cluster import objectstore
from infleet.cluster.controlplane import Fleet
from infleet.cluster.stack import Stack, example
from infleet.cluster.testing import wait_for
from infleet.operator import resources
from infleet.runtime.loader.smollm2 import smollm2_gguf

from .conftest import DEMO_NAMESPACE

ROOT = Path(__file__).resolve().parents[1]
UNREACHABLE_EXAMPLES = ("llama-3.1-8b-h100.yaml", "llama-405b-multinode.yaml")  # hf://: no network here


class ModelServer(http.server.SimpleHTTPRequestHandler):
    """A plain HTTP file server, as an in-cluster model mirror would be; it counts the GETs of each file."""

    gets: ClassVar[dict[str, int]] = {}

    def do_GET(self) -> None:
        type(self).gets[self.path] = type(self).gets.get(self.path, 0) + 1
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def copyfile(self, source: Any, outputfile: Any) -> None:
        """About 3 MB/s, so the download lasts long enough for ModelReady to show its progress."""
        while chunk := source.read(256 * 1024):
            outputfile.write(chunk)
            time.sleep(0.08)


@pytest.fixture
def model_url(launcher: Fleet) -> Iterator[str]:
    """The SmolLM2 GGUF over HTTP at the pod network's host address, which launched pods reach."""
    gguf = smollm2_gguf()
    handler = functools.partial(ModelServer, directory=str(gguf.parent))
    server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://{launcher.network.host_ip}:{server.server_address[1]}/{gguf.name}"
    finally:
        server.shutdown()


@pytest.fixture
def s3_store(stack: Stack, launcher: Fleet) -> str:
    """The fleet's object store holding the GGUF, the keys Secret the example names, and one with a wrong key."""
    uri = objectstore.seed(launcher, smollm2_gguf())
    stack.model_store_secret(launcher, DEMO_NAMESPACE)
    wrong = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "wrong-keys", "namespace": DEMO_NAMESPACE}}
    keys = objectstore.credentials(launcher.dir).env()
    stack.apply({**wrong, "stringData": {**keys, "AWS_SECRET_ACCESS_KEY": "not-the-key"}})
    return uri


def shipped_example(name: str, **model: str) -> dict[str, Any]:
    """examples/smollm2-l4.yaml as shipped, but for its name and (so as not to clash with the demo) served name."""
    obj: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "smollm2-l4.yaml").read_text())
    obj["metadata"] = {"name": name, "namespace": DEMO_NAMESPACE}
    obj["spec"]["model"] |= {"servedName": name, **model}
    return obj


def wait_model_failed(stack: Stack, name: str) -> dict[str, Any]:
    cond: dict[str, Any] = wait_for(
        lambda: (c := model_ready(stack, name)).get("status") == "False" and c.get("reason") != "Fetching" and c,
        timeout=180,
        interval=3,
        what=f"{name}'s ModelReady to give the fetcher's reason",
    )
    return cond


def model_ready(stack: Stack, name: str) -> dict[str, Any]:
    conditions = (stack.idep(DEMO_NAMESPACE, name).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "ModelReady"), {})


def test_a_remote_model_is_fetched_by_the_init_container_and_served(stack: Stack, model_url: str) -> None:
    idep = example(smollm2_gguf(), DEMO_NAMESPACE)
    idep["metadata"]["name"] = "fetched"
    idep["spec"]["model"] = {"uri": model_url, "servedName": "smollm2-fetched"}
    stack.apply(idep)
    try:
        downloading = wait_for(
            lambda: "GB (" in (c := model_ready(stack, "fetched")).get("message", "") and c,
            timeout=300,  # the pod's start comes first, slow on a loaded machine; the download itself lasts ~30 s
            interval=1,
            what="ModelReady to show the download's progress",
        )
        assert downloading["reason"] == "Fetching", downloading
        assert re.search(r": \d+\.\d\d of 0\.\d\d GB \(\d+%\)$", downloading["message"]), downloading
        stack.wait_ready(DEMO_NAMESPACE, "fetched", timeout=600)
        cond = model_ready(stack, "fetched")
        assert (cond["status"], cond["reason"]) == ("True", "Fetched"), cond
        path = "/" + smollm2_gguf().name
        assert ModelServer.gets.get(path) == 1, ModelServer.gets  # one pod, one download
        client = openai.OpenAI(base_url=f"{stack.gateway_url()}/v1", api_key="unused", max_retries=2, timeout=300)
        reply = client.chat.completions.create(
            model="smollm2-fetched",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=16,
        )
        assert reply.choices[0].message.content, reply
    finally:
        stack.kubectl("delete", "inferencedeployment", "fetched", "-n", DEMO_NAMESPACE, "--wait=false")


def test_the_shipped_example_is_served_from_the_fleets_object_store(stack: Stack, s3_store: str) -> None:
    idep = shipped_example("from-s3")
    assert idep["spec"]["model"]["uri"] == s3_store  # the example's URI is where the fleet's store has the model
    stack.apply(idep)
    try:
        stack.wait_ready(DEMO_NAMESPACE, "from-s3", timeout=600)
        cond = model_ready(stack, "from-s3")
        assert (cond["status"], cond["reason"]) == ("True", "Fetched"), cond
        client = openai.OpenAI(base_url=f"{stack.gateway_url()}/v1", api_key="unused", max_retries=2, timeout=300)
        reply = client.chat.completions.create(
            model="from-s3", messages=[{"role": "user", "content": "Hi"}], max_tokens=16
        )
        assert reply.choices[0].message.content, reply
    finally:
        stack.kubectl("delete", "inferencedeployment", "from-s3", "-n", DEMO_NAMESPACE, "--wait=false")


def counter(metrics: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", metrics, re.M))


def test_a_draft_model_from_the_store_is_fetched_with_the_model_and_drafts(stack: Stack, s3_store: str) -> None:
    """The model as its own draft, both from the object store: one init container pulls both (the second a cache hit
    of the same entry), the engine loads the draft and its greedy drafts are kept."""
    idep = shipped_example("drafted")
    idep["spec"]["runtime"]["speculative"] = {"method": "draft", "numTokens": 3, "draftModel": s3_store}
    stack.apply(idep)
    try:
        stack.wait_ready(DEMO_NAMESPACE, "drafted", timeout=600)
        (pod,) = stack.core.list_namespaced_pod(DEMO_NAMESPACE, label_selector="infleet.dev/deployment=drafted").items
        assert pod.spec.init_containers[0].command[3:5] == [s3_store, s3_store]
        client = openai.OpenAI(base_url=f"{stack.gateway_url()}/v1", api_key="unused", max_retries=2, timeout=300)
        reply = client.chat.completions.create(
            model="drafted", messages=[{"role": "user", "content": "Count from 1 to 10."}], temperature=0, max_tokens=16
        )
        assert reply.choices[0].message.content, reply
        metrics = httpx.get(f"http://{pod.status.pod_ip}:{resources.PORT}/metrics", timeout=30).text
        drafted, kept = (counter(metrics, name) for name in (names.SPEC_DRAFT_TOKENS, names.SPEC_ACCEPTED_TOKENS))
        assert drafted > 0 and kept > 0, (drafted, kept)  # the draft runs in float weights, the model in int8
    finally:
        stack.kubectl("delete", "inferencedeployment", "drafted", "-n", DEMO_NAMESPACE, "--wait=false")


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ({"credentialsSecret": "wrong-keys"}, "Unauthorized"),
        ({"uri": f"s3://{objectstore.BUCKET}/no-such-model/"}, "NotFound"),
    ],
    ids=["wrong-key", "missing-key"],
)
def test_s3_failures_show_their_reason(stack: Stack, s3_store: str, model: dict[str, str], reason: str) -> None:
    name = f"s3-{reason.lower()}"
    stack.apply(shipped_example(name, **model))
    try:
        cond = wait_model_failed(stack, name)
        assert cond["reason"] == reason, cond
    finally:
        stack.kubectl("delete", "inferencedeployment", name, "-n", DEMO_NAMESPACE, "--wait=false")


@pytest.mark.parametrize("file", UNREACHABLE_EXAMPLES)
def test_an_example_whose_store_is_unreachable_says_so(stack: Stack, file: str) -> None:
    obj = yaml.safe_load((ROOT / "examples" / file).read_text())
    obj["metadata"]["namespace"] = DEMO_NAMESPACE
    name = obj["metadata"]["name"]
    stack.apply(obj)  # as shipped: only the namespace is ours
    try:
        cond = wait_model_failed(stack, name)
        assert cond["reason"] == "StoreUnreachable", cond
        assert obj["spec"]["model"]["uri"] in cond["message"], cond
        described = stack.kubectl("describe", "inferencedeployment", name, "-n", DEMO_NAMESPACE)
        assert "StoreUnreachable" in described and "ModelStoreUnreachable" in described, described  # the Event too
    finally:
        stack.kubectl("delete", "inferencedeployment", name, "-n", DEMO_NAMESPACE, "--wait=false")


def test_every_shipped_example_is_accepted_by_the_api_server(stack: Stack) -> None:
    """Server-side dry run: the CRD's schema and CEL rules accept each example exactly as shipped."""
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        out = stack.kubectl("apply", "--dry-run=server", "-n", DEMO_NAMESPACE, "-f", str(path))
        assert "(server dry run)" in out, (path.name, out)
