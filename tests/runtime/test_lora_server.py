"""The adapter API through a real `infleet runtime serve --enable-lora` process and the official `openai` client:
adapters are models (listed with their parent), load and unload under streaming traffic drop no request, bad
inputs get the OpenAI error body, and the per-adapter series count requests."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from infleet.runtime.server.launch import ServerProcess

from .lora_fixtures import LoRAModels, make
from .test_lora_engine import VOCAB, engine

BASE = "tiny"
PROMPT = [5, 17, 42, 9, 33, 8, 21]
NEW = 160  # long enough that streams are still running while adapters are unloaded and loaded


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, save_hf_layout: Any) -> LoRAModels:
    return make(tmp_path_factory.mktemp("lora-server"), save_hf_layout, VOCAB)


@pytest.fixture(scope="module")
def server(models: LoRAModels) -> Any:
    modules = [f"{name}={path}" for name, path in models.adapters.items()]
    args = ["--served-name", BASE, "--tier", "fp8", "--max-model-len", "256", "--num-kv-blocks", "256"]
    args += ["--enable-lora", "--max-loras", "2", "--max-lora-rank", "8", "--lora-modules", *modules]
    with ServerProcess(models.base, *args) as s:
        yield s


@pytest.fixture(scope="module")
def reference(models: LoRAModels) -> dict[str | None, str]:
    """Each model's greedy text from the engine in this process, built the same way (fp8 on a CPU upcasts its
    weights and computes in float32, so the server must give exactly these tokens)."""
    from infleet.runtime.engine.sampler import SamplingParams

    e = engine(models, tier="fp8")
    out = {}
    for adapter in (None, "sql", "poet"):
        params = SamplingParams(max_tokens=NEW, temperature=0.0, ignore_eos=True, adapter=adapter)
        out[adapter] = e.tokenizer.decode(e.generate([PROMPT], params)[0])
    return out


def client(server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def stream(server: Any, model: str, started: threading.Event | None = None) -> tuple[str, str | None, float]:
    """(text, finish reason, when the last chunk came) of a greedy streamed completion through `model`."""
    out = client(server).completions.create(
        model=model, prompt=PROMPT, max_tokens=NEW, temperature=0, stream=True, extra_body={"ignore_eos": True}
    )
    text, reason = "", None
    for chunk in out:
        if started is not None:
            started.set()
        text += chunk.choices[0].text
        reason = chunk.choices[0].finish_reason or reason
    return text, reason, time.monotonic()


def in_engine(http: httpx.Client) -> float:
    """Requests running or waiting in the engine, from its gauges."""
    lines = http.get("/metrics").text.splitlines()
    gauges = ("infleet_num_requests_running{", "infleet_num_requests_waiting{")
    return sum(float(line.split()[-1]) for line in lines if line.startswith(gauges))


def test_adapters_are_models_with_a_parent(server: Any) -> None:
    cards = {m.id: m for m in client(server).models.list().data}
    assert set(cards) == {BASE, "sql", "poet"}
    assert cards["sql"].model_extra and cards["sql"].model_extra["parent"] == BASE
    assert cards["poet"].model_extra and cards["poet"].model_extra["lora_rank"] == 8
    assert "parent" not in (cards[BASE].model_extra or {})


def test_each_adapter_answers_as_in_process(server: Any, reference: Any) -> None:
    for name, adapter in ((BASE, None), ("sql", "sql"), ("poet", "poet")):
        assert stream(server, name)[:2] == (reference[adapter], "length"), name
    assert len({reference[None], reference["sql"], reference["poet"]}) == 3


def test_the_gateway_routes_adapter_names_to_the_deployment_that_serves_them(server: Any, reference: Any) -> None:
    """A deployment's spec.adapters become model names at the gateway: listed with their parent, routed to the
    deployment's replicas by bare or namespace-qualified name, answered exactly as by the replica."""
    from infleet.gateway.app import Gateway
    from infleet.gateway.app import build_app as gateway_app
    from infleet.gateway.catalog import Endpoint
    from infleet.gateway.discovery import deployment_from

    from .test_structured_output import serve

    idep = {
        "metadata": {"namespace": "team-a", "name": "tiny"},
        "spec": {"model": {"servedName": BASE}, "adapters": [{"name": "sql", "uri": "file:///a"}, {"name": "poet"}]},
    }
    d = deployment_from(idep)
    gateway = Gateway()
    gateway.catalog.set_deployment(d.namespace, d.name, d.served_name, adapters=d.adapters)
    gateway.catalog.set_slice(d.namespace, d.name, "s", (Endpoint("127.0.0.1", int(server.url.rsplit(":", 1)[1])),))
    served = serve(gateway_app(gateway))
    url = next(served)
    try:
        via = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        cards = {m.id: (m.owned_by, (m.model_extra or {}).get("parent")) for m in via.models.list().data}
        assert cards == {BASE: ("team-a", None), "sql": ("team-a", BASE), "poet": ("team-a", BASE)}
        for model, adapter in (("sql", "sql"), ("team-a/poet", "poet"), (f"team-a/{BASE}", None)):
            out = via.completions.create(
                model=model, prompt=PROMPT, max_tokens=NEW, temperature=0, extra_body={"ignore_eos": True}
            )
            assert out.choices[0].text == reference[adapter], model
        with pytest.raises(openai.NotFoundError, match="served models: 'poet', 'sql', 'tiny'"):
            via.completions.create(model="nope", prompt=PROMPT, max_tokens=1)
    finally:
        served.close()


def test_the_gateway_has_a_replica_load_an_adapter_none_holds(server: Any, models: LoRAModels, reference: Any) -> None:
    """An adapter of the spec that no replica serves yet (added since the operator last looked, or the replica
    restarted): the gateway asks the replica to load it from its URI, then its answer is the adapter's."""
    from infleet.gateway.app import Gateway
    from infleet.gateway.app import build_app as gateway_app
    from infleet.gateway.catalog import Endpoint
    from infleet.gateway.discovery import deployment_from

    from .test_structured_output import serve

    uri = models.adapters["poet"].as_uri()
    idep = {"metadata": {"namespace": "team-a", "name": "tiny"}, "spec": {"adapters": [{"name": "verse", "uri": uri}]}}
    d = deployment_from(idep)
    gateway = Gateway()
    gateway.catalog.set_deployment(d.namespace, d.name, BASE, adapters=d.adapters)
    gateway.catalog.set_slice(d.namespace, d.name, "s", (Endpoint("127.0.0.1", int(server.url.rsplit(":", 1)[1])),))
    assert "verse" not in {m.id for m in client(server).models.list().data}
    served = serve(gateway_app(gateway))
    url = next(served)
    try:
        via = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        out = via.completions.create(
            model="verse", prompt=PROMPT, max_tokens=NEW, temperature=0, extra_body={"ignore_eos": True}
        )
        assert out.choices[0].text == reference["poet"]  # the poet adapter's files, under the spec's name
        assert "verse" in {m.id for m in client(server).models.list().data}  # loaded on the replica itself
    finally:
        served.close()
        httpx.post(f"{server.url}/v1/unload_lora_adapter", json={"lora_name": "verse"})


def test_load_and_unload_under_traffic_drop_no_request(server: Any, models: LoRAModels, reference: Any) -> None:
    http = httpx.Client(base_url=server.url, timeout=60)
    poet = {"lora_name": "poet2", "lora_path": str(models.adapters["poet"])}
    assert http.post("/v1/load_lora_adapter", json=poet).status_code == 200
    names = ["sql", "poet", BASE, "poet2"] * 3
    started = [threading.Event() for _ in names]
    with cf.ThreadPoolExecutor(len(names)) as pool:
        futures = [pool.submit(stream, server, n, e) for n, e in zip(names, started, strict=True)]
        while in_engine(http) < len(names):  # every request is in the engine (running or queued)
            time.sleep(0.01)
        assert started[3].wait(60)  # and a poet2 stream is under way
        # while they run: take poet2 (in use) away and bring a new adapter in through a file:// URI
        assert http.post("/v1/unload_lora_adapter", json={"lora_name": "poet2"}).status_code == 200
        unloaded = time.monotonic()
        sql = {"lora_name": "sql2", "lora_path": f"file://{models.adapters['sql']}"}
        assert http.post("/v1/load_lora_adapter", json=sql).status_code == 200
        loaded = time.monotonic()
        results = [f.result() for f in futures]
    expected = {"sql": reference["sql"], "poet": reference["poet"], BASE: reference[None], "poet2": reference["poet"]}
    for model, (text, reason, _) in zip(names, results, strict=True):
        assert (text, reason) == (expected[model], "length"), model
    # else the test proved nothing: a poet2 stream outlived its unload, and some stream the load
    assert max(ended for model, (_, _, ended) in zip(names, results, strict=True) if model == "poet2") > unloaded
    assert max(ended for _, _, ended in results) > loaded
    assert stream(server, "sql2")[0] == reference["sql"]
    with pytest.raises(openai.NotFoundError):
        client(server).completions.create(model="poet2", prompt=PROMPT, max_tokens=2)
    assert http.post("/v1/unload_lora_adapter", json={"lora_name": "sql2"}).status_code == 200


def test_bad_inputs_get_clear_errors(server: Any, models: LoRAModels, tmp_path: Path) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client(server).chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert err.value.body["code"] == "model_not_found" and "'sql'" in err.value.body["message"]  # type: ignore[index]
    http = httpx.Client(base_url=server.url, timeout=60)

    def load(body: dict[str, Any]) -> httpx.Response:
        return http.post("/v1/load_lora_adapter", json=body)

    cases = [
        (load({"lora_name": "sql", "lora_path": str(models.adapters["sql"])}), 400, "already loaded"),
        (load({"lora_name": BASE, "lora_path": str(models.adapters["sql"])}), 400, "base model's name"),
        (load({"lora_name": "x", "lora_path": str(tmp_path / "none")}), 400, "is not a directory"),
        (load({"lora_name": "x", "lora_path": str(models.base)}), 400, "no adapter_config.json"),
        (load({"lora_name": "x"}), 400, "lora_path"),
        (load({"lora_name": "x", "lora_path": "ftp://host/a"}), 400, "not supported"),
        (http.post("/v1/unload_lora_adapter", json={"lora_name": "nope"}), 404, "no adapter named 'nope'"),
    ]
    for response, status, words in cases:
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert words in error["message"] and error["type"] in ("invalid_request_error", "not_found_error")
    assert {m.id for m in client(server).models.list().data} >= {BASE, "sql", "poet"}


def adapter_series(server: Any, name: str, adapter: str) -> float:
    lines = httpx.get(f"{server.url}/metrics").text.splitlines()
    return sum(float(x.split()[-1]) for x in lines if x.startswith(name + "{") and f'adapter="{adapter}"' in x)


def test_per_adapter_metrics(server: Any) -> None:
    before = {a: adapter_series(server, "infleet_lora_requests_total", a) for a in ("sql", "poet")}
    tokens = adapter_series(server, "infleet_lora_generation_tokens_total", "sql")
    client(server).completions.create(model="sql", prompt=PROMPT, max_tokens=3, extra_body={"ignore_eos": True})
    assert adapter_series(server, "infleet_lora_requests_total", "sql") == before["sql"] + 1
    assert adapter_series(server, "infleet_lora_requests_total", "poet") == before["poet"]
    assert adapter_series(server, "infleet_lora_generation_tokens_total", "sql") == tokens + 3
    assert adapter_series(server, "infleet_lora_e2e_request_latency_seconds_count", "sql") == before["sql"] + 1


def test_the_operator_brings_a_replica_to_its_spec_s_adapters(
    server: Any, models: LoRAModels, reference: dict[str | None, str]
) -> None:
    """operator/adapters.py's calls against a real runtime: the spec drops `poet` and adds `sql-b` (the sql files
    under another name); a second pass has nothing to do; a bad entry is reported with the runtime's reason while
    the rest stay served."""
    import asyncio

    from infleet.operator import adapters

    sql, poet = str(models.adapters["sql"]), str(models.adapters["poet"])

    def converge(want: adapters.Wanted) -> tuple[list[str], str | None]:
        async def run() -> tuple[list[str], str | None]:
            async with httpx.AsyncClient(timeout=60) as http:
                return await adapters.converge(http, server.url, want)

        return asyncio.run(run())

    want: adapters.Wanted = {"sql": (sql, None), "sql-b": (sql, None)}
    assert converge(want) == (["sql", "sql-b"], None)
    assert stream(server, "sql-b")[0] == reference["sql"]
    with pytest.raises(openai.NotFoundError):
        client(server).completions.create(model="poet", prompt=PROMPT, max_tokens=2)
    assert adapters.plan(want, adapters.served(httpx.get(f"{server.url}/v1/models").json())) == ([], [])
    loaded, message = converge({"sql": (sql, None), "bad": (poet + "-missing", None), "rev": (poet, "v2")})
    assert loaded == ["sql"] and message is not None
    assert "bad: " in message and "is not a directory" in message and "rev: revision: " in message, message
    assert converge({"sql": (sql, None), "poet": (poet, None)}) == (["poet", "sql"], None)  # as the module began
    assert stream(server, "poet")[0] == reference["poet"]
