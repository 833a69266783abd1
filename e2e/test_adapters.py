"""LoRA adapters added and removed while the deployment serves: the operator loads them into the running replica
from the fleet's object store (the runtime fetches them), status lists them per replica, the gateway routes their
names, and no request fails and no pod restarts on the way."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import torch
from safetensors.torch import save_file

from infleet.cluster import objectstore
from infleet.cluster.controlplane import Fleet
from infleet.cluster.stack import Stack
from infleet.cluster.testing import wait_for

from .conftest import DEMO_NAMESPACE, Cluster

NAME = "adapted"
# SmolLM2-135M: hidden size 576, 30 layers, 3 KV heads of 64
LAYERS, HIDDEN, KV = 30, 576, 192
RANK = 8


def write_adapter(path: Path, seed: int) -> Path:
    """A PEFT LoRA of rank RANK on q_proj and v_proj of every layer, small random weights."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for i in range(LAYERS):
        for name, out in (("q_proj", HIDDEN), ("v_proj", KV)):
            key = f"base_model.model.model.layers.{i}.self_attn.{name}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(RANK, HIDDEN, generator=gen) / HIDDEN**0.5
            tensors[f"{key}.lora_B.weight"] = torch.randn(out, RANK, generator=gen) * 0.01
    path.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": RANK, "lora_alpha": 2 * RANK, "target_modules": ["q_proj", "v_proj"]}
    (path / "adapter_config.json").write_text(json.dumps(config))
    save_file(tensors, str(path / "adapter_model.safetensors"))
    return path


@pytest.fixture
def store(stack: Stack, launcher: Fleet, tmp_path: Path) -> dict[str, str]:
    """Two adapters in the fleet's object store: name -> s3:// URI; the keys Secret in the demo namespace."""
    s3 = objectstore.client(launcher)
    objectstore.seed(launcher, _smollm2())  # makes the bucket when the fleet is new
    uris = {}
    for seed, name in enumerate(("sql", "poet")):
        local = write_adapter(tmp_path / name, seed)
        for f in local.iterdir():
            s3.upload_file(str(f), objectstore.BUCKET, f"adapters/{name}/{f.name}")
        uris[name] = f"s3://{objectstore.BUCKET}/adapters/{name}/"
    stack.model_store_secret(launcher, DEMO_NAMESPACE)
    return uris


def _smollm2() -> Path:
    from infleet.runtime.loader.smollm2 import smollm2_gguf

    return smollm2_gguf()


@pytest.fixture
def adapted(stack: Stack, smollm2: Callable[[str], dict[str, Any]], store: dict[str, str]) -> Iterator[dict[str, Any]]:
    idep = smollm2(NAME)
    idep["spec"]["model"]["servedName"] = NAME
    idep["spec"]["model"]["credentialsSecret"] = objectstore.SECRET_NAME
    idep["spec"]["adapters"] = [{"name": "sql", "uri": store["sql"]}]
    stack.apply(idep)
    try:
        stack.wait_ready(DEMO_NAMESPACE, NAME, timeout=600, quiet=True)
        yield idep
    finally:
        stack.kubectl("delete", "idep", NAME, "-n", DEMO_NAMESPACE, "--timeout=300s")


def loaded(stack: Stack) -> list[list[str]]:
    obj = json.loads(stack.kubectl("get", "idep", NAME, "-n", DEMO_NAMESPACE, "-o", "json"))
    return [row.get("loaded", []) for row in (obj.get("status") or {}).get("adapters") or []]


def set_adapters(stack: Stack, adapters: list[dict[str, str]]) -> None:
    patch = json.dumps({"spec": {"adapters": adapters}})
    stack.kubectl("patch", "idep", NAME, "-n", DEMO_NAMESPACE, "--type=merge", "-p", patch)


class Load:
    """Chats through the gateway, one thread per model name, until stopped; every failure is kept."""

    def __init__(self, stack: Stack, models: list[str]) -> None:
        self.client = openai.OpenAI(base_url=f"{stack.gateway_url()}/v1", api_key="unused", max_retries=0, timeout=120)
        self.failures: list[str] = []
        self.answered: dict[str, int] = dict.fromkeys(models, 0)
        self.stops = {m: threading.Event() for m in models}
        self.threads = [threading.Thread(target=self.run, args=(m,), daemon=True) for m in models]
        for t in self.threads:
            t.start()

    def run(self, model: str) -> None:
        while not self.stops[model].is_set():
            try:
                reply = self.client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=4
                )
                assert reply.choices[0].message.content is not None
                self.answered[model] += 1
            except Exception as e:
                self.failures.append(f"{model}: {type(e).__name__}: {e}")

    def stop(self, model: str) -> None:
        self.stops[model].set()
        self.threads[list(self.stops).index(model)].join(timeout=180)


def test_adapters_come_and_go_under_traffic_without_a_restart_or_a_failed_request(
    stack: Stack, fleet: Cluster, adapted: dict[str, Any], store: dict[str, str]
) -> None:
    wait_for(lambda: loaded(stack) == [["sql"]], timeout=300, what="sql loaded into the replica, in status")
    pods = fleet.core.list_namespaced_pod(DEMO_NAMESPACE, label_selector=f"infleet.dev/deployment={NAME}").items
    uids = {p.metadata.uid for p in pods}
    load = Load(stack, [NAME, "sql"])
    try:
        set_adapters(stack, [{"name": "sql", "uri": store["sql"]}, {"name": "poet", "uri": store["poet"]}])
        wait_for(lambda: loaded(stack) == [["poet", "sql"]], timeout=300, what="poet loaded too")
        hi = [{"role": "user", "content": "Hi"}]
        poet = load.client.chat.completions.create(model="poet", messages=hi, max_tokens=8)  # sampled: bound it
        assert poet.choices[0].message.content
        load.stop("sql")  # its name is about to go: requests for it are expected to fail from then on
        set_adapters(stack, [{"name": "poet", "uri": store["poet"]}])
        wait_for(lambda: loaded(stack) == [["poet"]], timeout=300, what="sql unloaded")
        with pytest.raises(openai.NotFoundError):
            load.client.chat.completions.create(model="sql", messages=hi, max_tokens=8)
    finally:
        for model in list(load.stops):
            load.stop(model)
    assert not load.failures, load.failures[:5]
    assert load.answered[NAME] > 0 and load.answered["sql"] > 0, load.answered
    after = fleet.core.list_namespaced_pod(DEMO_NAMESPACE, label_selector=f"infleet.dev/deployment={NAME}").items
    assert {p.metadata.uid for p in after} == uids
    assert all(c.restart_count == 0 for p in after for c in p.status.container_statuses or []), "a runtime restarted"
