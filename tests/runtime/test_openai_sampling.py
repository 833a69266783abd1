"""The OpenAI sampling fields, driven by the official `openai` client against the runtime's real HTTP server.

The model is a small random Llama built and saved by `transformers`, loaded by infleet's loader in float32 and
served in this process (uvicorn on a free port); the same `transformers` model is the numerical reference: its
logits, log-softmaxed (after the penalty and bias formulas, written here independently of the sampler), must equal
the log-probabilities the server reports, and its greedy tokens the tokens the server returns.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch

from infleet.runtime.config import EngineConfig
from infleet.runtime.engine.engine import AsyncEngine, LLMEngine
from infleet.runtime.engine.sampler import SamplingParams
from infleet.runtime.server.launch import free_port

SERVED = "tiny"
PROMPT = "The quick brown fox jumps over the lazy dog while the cat watches from the old wooden fence."


@pytest.fixture(scope="module")
def tiny(
    tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer: Any, save_hf_layout: Callable[[Any, Path], None]
) -> tuple[Path, Any]:
    """A random two-layer Llama saved in the Hugging Face layout, weights scaled so greedy choices are clear-cut."""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=smollm2_tokenizer.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rope_theta=10000.0,
        tie_word_embeddings=True, eos_token_id=2, bos_token_id=1,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.5 if "embed" in name else 2.0 / p.shape[1] ** 0.5)
    path = tmp_path_factory.mktemp("tiny-llama")
    save_hf_layout(model, path)
    return path, model


@pytest.fixture(scope="module")
def engine(tiny: tuple[Path, Any]) -> LLMEngine:
    from infleet.runtime.loader import load_model

    model, config, tokenizer = load_model(tiny[0], dtype=torch.float32)
    return LLMEngine(model, config, tokenizer, EngineConfig(max_model_len=256, max_waiting=64))


@pytest.fixture(scope="module")
def server(engine: LLMEngine) -> Iterator[str]:
    """The runtime's app over `engine`, served by uvicorn on a free loopback port."""
    import uvicorn

    from infleet.runtime.metrics import RuntimeMetrics
    from infleet.runtime.server.app import Serving, build_app

    serving = Serving(AsyncEngine(engine), SERVED, RuntimeMetrics(SERVED, "bf16"))
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(build_app(serving), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield url
    uv.should_exit = True
    thread.join(30)


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=120)


# --- the reference ----------------------------------------------------------------------------------------------------
def reference_logits(hf: Any, ids: list[int]) -> torch.Tensor:
    """transformers' logits (float32) at every position of `ids`."""
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0].float()


def penalized(logits: torch.Tensor, prompt: list[int], out: list[int], fields: dict[str, Any]) -> torch.Tensor:
    """vLLM's repetition penalty, then OpenAI's presence and frequency penalties, then logit_bias."""
    x = logits.clone()
    r = fields.get("repetition_penalty", 1.0)
    for t in set(prompt + out):
        x[t] = x[t] / r if x[t] > 0 else x[t] * r
    for t in set(out):
        x[t] -= fields.get("frequency_penalty", 0.0) * out.count(t) + fields.get("presence_penalty", 0.0)
    for t, b in fields.get("logit_bias", {}).items():
        x[int(t)] += b
    return x


def greedy_reference(hf: Any, prompt: list[int], steps: int, fields: dict[str, Any]) -> list[tuple[int, torch.Tensor]]:
    """(token, processed log-softmax) for each greedy step under the penalties and bias in `fields`."""
    out: list[int] = []
    found = []
    for _ in range(steps):
        logprobs = penalized(reference_logits(hf, prompt + out)[-1], prompt, out, fields).log_softmax(-1)
        token = int(logprobs.argmax())
        found.append((token, logprobs))
        out.append(token)
    return found


def same_logprobs(a: list[Any], b: list[Any]) -> bool:
    """Chat logprob entries alike: the same tokens, values equal up to float32 noise (a prefix-cache hit computes
    the prompt in other batch shapes)."""
    flat = [[(e.token, e.logprob, [(t.token, t.logprob) for t in e.top_logprobs]) for e in x] for x in (a, b)]
    tokens = [[(t, [tt for tt, _ in top]) for t, _, top in x] for x in flat]
    values = [[v for _, lp, top in x for v in (lp, *(vv for _, vv in top))] for x in flat]
    return tokens[0] == tokens[1] and values[0] == pytest.approx(values[1], abs=1e-4)


def text_of(engine: LLMEngine, token_id: int) -> str:
    return str(engine.tokenizer.decode([token_id], skip_special_tokens=False))


# --- logprobs ---------------------------------------------------------------------------------------------------------
def test_chat_logprobs_are_the_reference_log_softmax(client: openai.OpenAI, server: str, tiny, engine) -> None:
    messages = [{"role": "user", "content": PROMPT}]
    r = client.chat.completions.create(
        model=SERVED, messages=messages, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    prompt = httpx.post(f"{server}/tokenize", json={"model": SERVED, "messages": messages}).json()["tokens"]
    assert len(prompt) == r.usage.prompt_tokens
    content = r.choices[0].logprobs.content
    assert len(content) == 6
    for got, (token, ref) in zip(content, greedy_reference(tiny[1], prompt, 6, {}), strict=True):
        assert got.token == text_of(engine, token) and got.bytes == list(got.token.encode())
        assert got.logprob == pytest.approx(float(ref[token]), abs=2e-4)
        top_values, top_ids = ref.topk(3)
        assert [t.token for t in got.top_logprobs] == [text_of(engine, int(i)) for i in top_ids]
        assert [t.logprob for t in got.top_logprobs] == pytest.approx(top_values.tolist(), abs=2e-4)
    assert "".join(c.token for c in content) == r.choices[0].message.content


def test_completion_echo_gives_the_prompts_logprobs(client: openai.OpenAI, tiny, engine) -> None:
    """lm-eval's loglikelihood request: token-id prompt, echo, logprobs, one new token."""
    prompt = engine.tokenizer.encode(PROMPT)
    r = client.completions.create(model=SERVED, prompt=prompt, max_tokens=1, temperature=0, echo=True, logprobs=2)
    lp = r.choices[0].logprobs
    ref = reference_logits(tiny[1], prompt).log_softmax(-1)
    assert len(lp.tokens) == len(prompt) + 1 and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    expected = ref[:-1].gather(1, torch.tensor(prompt[1:])[:, None])[:, 0]
    assert lp.token_logprobs[1 : len(prompt)] == pytest.approx(expected.tolist(), abs=2e-4)
    new = int(ref[-1].argmax())
    assert lp.tokens[-1] == text_of(engine, new)
    assert lp.token_logprobs[-1] == pytest.approx(float(ref[-1, new]), abs=2e-4)
    assert all(len(top) == 2 for top in lp.top_logprobs[1:])
    assert r.choices[0].text == engine.tokenizer.decode(prompt) + text_of(engine, new)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    again = client.completions.create(model=SERVED, prompt=prompt, max_tokens=1, temperature=0, echo=True, logprobs=2)
    assert again.choices[0].logprobs.tokens == lp.tokens  # the prompt's blocks are cached now: echo does not use them


def test_completion_stream_with_echo_and_logprobs(client: openai.OpenAI) -> None:
    ask = dict(model=SERVED, prompt=PROMPT, max_tokens=6, temperature=0, echo=True, logprobs=1)
    whole = client.completions.create(**ask).choices[0]
    chunks = [c.choices[0] for c in client.completions.create(stream=True, **ask) if c.choices]
    assert chunks[0].text.startswith(PROMPT) and "".join(c.text for c in chunks) == whole.text
    assert [t for c in chunks for t in c.logprobs.tokens] == whole.logprobs.tokens
    assert [o for c in chunks for o in c.logprobs.text_offset] == whole.logprobs.text_offset
    streamed = [v for c in chunks for v in c.logprobs.token_logprobs]
    assert streamed[0] is None and streamed[1:] == pytest.approx(whole.logprobs.token_logprobs[1:], abs=1e-4)


def test_penalties_and_bias_follow_their_formulas(client: openai.OpenAI, tiny, engine) -> None:
    prompt = engine.tokenizer.encode(PROMPT)
    steps = 8
    raw = greedy_reference(tiny[1], prompt, steps, {})
    fields = {
        "presence_penalty": 1.5, "frequency_penalty": 0.8, "repetition_penalty": 1.4,
        "logit_bias": {str(raw[0][0]): -5.0, str(prompt[5]): 2.0},  # the unbiased first choice loses
    }  # fmt: skip
    r = client.completions.create(
        model=SERVED, prompt=prompt, max_tokens=steps, temperature=0, logprobs=3,
        presence_penalty=fields["presence_penalty"], frequency_penalty=fields["frequency_penalty"],
        logit_bias=fields["logit_bias"], extra_body={"repetition_penalty": 1.4, "ignore_eos": True},
    )  # fmt: skip
    lp = r.choices[0].logprobs
    expected = greedy_reference(tiny[1], prompt, steps, fields)
    assert lp.tokens == [text_of(engine, t) for t, _ in expected]
    assert lp.token_logprobs == pytest.approx([float(ref[t]) for t, ref in expected], abs=2e-4)
    assert expected[0][0] != raw[0][0]  # so the check above is not of an unprocessed distribution


def test_logit_bias_of_100_forces_the_token(client: openai.OpenAI, engine) -> None:
    forced = engine.tokenizer.encode(" fox")[0]
    r = client.completions.create(
        model=SERVED, prompt=PROMPT, max_tokens=5, temperature=1.0, seed=3, logit_bias={str(forced): 100},
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert r.choices[0].text == text_of(engine, forced) * 5


# --- n, seeds, streams ---------------------------------------------------------------------------------------------
def test_n_choices_fork_after_prefill_and_share_the_prompts_blocks(engine: LLMEngine) -> None:
    prompt = engine.tokenizer.encode(PROMPT * 2)
    bs = engine.block_manager.block_size
    assert len(prompt) % bs and len(prompt) > 2 * bs  # full blocks to share and a partial one to recompute
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True, n=3)
    alone = engine.generate([prompt], SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))[0]
    seq = engine.add_request("fork", prompt, params)
    outs: dict[int, list[int]] = {}
    shared = None
    while engine.has_unfinished():
        for o in engine.step():
            outs.setdefault(o.index, []).extend(o.new_token_ids)
        if shared is None and seq.forks:
            full = len(prompt) // bs
            shared = seq.block_table[:full]
            assert [c.block_table[:full] for c in seq.choices] == [shared] * 3
            assert [engine.block_manager.blocks[b].ref_count for b in shared] == [3] * full
            assert all(len(c.block_table) == full for c in seq.forks)  # the partial block is each fork's own
    assert shared is not None
    assert outs == {0: alone, 1: alone, 2: alone}  # greedy: every choice is the request alone
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_forked_choices_survive_preemption(engine: LLMEngine) -> None:
    """Too few KV blocks for four choices at once: some are preempted and recomputed, and still answer alike."""
    small = LLMEngine(engine.model, engine.config, engine.tokenizer, EngineConfig(max_model_len=128, num_kv_blocks=9))
    prompt = engine.tokenizer.encode(PROMPT * 2)[:40]
    greedy = SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True)
    alone = small.generate([prompt], greedy)[0]
    small.add_request("crowded", prompt, SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True, n=4))
    outs: dict[int, list[int]] = {}
    while small.has_unfinished():
        for o in small.step():
            outs.setdefault(o.index, []).extend(o.new_token_ids)
    assert small.scheduler.num_preemptions > 0
    assert outs == {i: alone for i in range(4)}
    assert small.block_manager.num_free_blocks == small.block_manager.num_blocks


def test_n_choices_seeded(client: openai.OpenAI) -> None:
    ask = dict(model=SERVED, prompt=PROMPT, max_tokens=8, temperature=1.0, extra_body={"ignore_eos": True})
    three = client.completions.create(n=3, seed=11, **ask)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert len({c.text for c in three.choices}) == 3  # each choice draws with its own generator
    assert three.usage.completion_tokens == 24
    again = client.completions.create(n=3, seed=11, **ask).choices
    assert [c.text for c in again] == [c.text for c in three.choices]  # same seed, same choices
    assert client.completions.create(seed=11, **ask).choices[0].text == three.choices[0].text  # choice 0: seed
    chunks = list(client.completions.create(n=3, seed=11, stream=True, stream_options={"include_usage": True}, **ask))
    texts = {i: "".join(c.choices[0].text for c in chunks if c.choices and c.choices[0].index == i) for i in range(3)}
    assert [texts[i] for i in range(3)] == [c.text for c in three.choices]
    assert chunks[-1].choices == [] and chunks[-1].usage == three.usage


def test_a_seed_gives_the_same_tokens_inside_a_mixed_batch(client: openai.OpenAI) -> None:
    seeded = dict(model=SERVED, prompt=PROMPT, max_tokens=12, temperature=0.9, top_p=0.95, seed=1234)
    alone = client.completions.create(**seeded).choices[0].text
    others = [
        dict(model=SERVED, prompt=f"{i} {PROMPT}", max_tokens=12, temperature=1.2, presence_penalty=0.5)
        for i in range(5)
    ]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(client.completions.create, **b) for b in [*others[:3], seeded, *others[3:]]]
        texts = [f.result().choices[0].text for f in futures]
    assert texts[3] == alone


def test_chat_stream_with_logprobs_and_usage(client: openai.OpenAI) -> None:
    ask = dict(model=SERVED, messages=[{"role": "user", "content": PROMPT}], max_tokens=6, temperature=0, n=2)
    whole = client.chat.completions.create(logprobs=True, top_logprobs=2, **ask)
    chunks = list(
        client.chat.completions.create(
            logprobs=True, top_logprobs=2, stream=True, stream_options={"include_usage": True}, **ask
        )
    )
    for i in range(2):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == i]
        assert mine[0].delta.role == "assistant"
        assert "".join(c.delta.content or "" for c in mine) == whole.choices[i].message.content
        streamed = [t for c in mine if c.logprobs for t in c.logprobs.content]
        assert same_logprobs(streamed, whole.choices[i].logprobs.content)
    assert chunks[-1].usage == whole.usage and whole.usage.completion_tokens == 12


# --- utility endpoints, errors, metrics ------------------------------------------------------------------------------
def test_tokenize_and_detokenize(server: str, engine: LLMEngine) -> None:
    r = httpx.post(f"{server}/tokenize", json={"model": SERVED, "prompt": PROMPT, "return_token_strs": True}).json()
    assert r["tokens"] == engine.tokenizer.encode(PROMPT) and r["count"] == len(r["tokens"])
    assert r["max_model_len"] == engine.max_model_len and "".join(r["token_strs"]) == PROMPT
    back = httpx.post(f"{server}/detokenize", json={"model": SERVED, "tokens": r["tokens"]}).json()
    assert back == {"prompt": PROMPT}


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v1/completions", {"prompt": "x", "n": 0}, 400, "n: Input should be greater than or equal to 1"),
        ("/v1/completions", {"prompt": "x", "logprobs": 9}, 400, "logprobs: Input should be less than or equal to 5"),
        ("/v1/completions", {"prompt": "x", "logit_bias": {"99999": 1}}, 400, "logit_bias: token ids must be in"),
        ("/v1/completions", {"prompt": "x", "frequency_penalty": 2.1}, 400, "frequency_penalty: Input should be"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, 400,
         "logprobs must be true"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
         400, "tools.0.function: Field required"),
        ("/tokenize", {"prompt": "x", "messages": [{"role": "user", "content": "x"}]}, 400, "exactly one of"),
        ("/tokenize", {"model": "other", "prompt": "x"}, 404, "model: the model 'other' does not exist"),
        ("/detokenize", {"tokens": [1, 10**6]}, 400, "tokens: token id 1000000 is outside the vocabulary"),
        ("/detokenize", {"tokens": [-1]}, 400, "tokens: token ids must be >= 0"),
    ],
)  # fmt: skip
def test_bad_values_are_openai_errors(server: str, path: str, body: dict, status: int, message: str) -> None:
    r = httpx.post(f"{server}{path}", json=body, timeout=60)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert message in error["message"] and error["type"] in ("invalid_request_error", "not_found_error")


def test_the_client_raises_bad_request_with_the_field(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=SERVED, messages=[{"role": "user", "content": "x"}], n=200)
    assert caught.value.param == "n" and "less than or equal to 128" in caught.value.message


def feature_counts(server: str) -> dict[str, float]:
    text = httpx.get(f"{server}/metrics").text
    return {m[0]: float(m[1]) for m in re.findall(r'^infleet_request_features_total\{.*feature="(\w+)".*\} (\S+)$',
                                                   text, re.M)}  # fmt: skip


def test_feature_metrics_count_each_request_once(client: openai.OpenAI, server: str) -> None:
    before = feature_counts(server)
    assert set(before) >= {"n", "logprobs", "echo", "penalties", "logit_bias", "seed", "stream_usage"}
    client.completions.create(model=SERVED, prompt=PROMPT, max_tokens=2, n=2, echo=True, logprobs=1, seed=5)
    after = feature_counts(server)
    changed = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    assert changed == {"n": 1, "echo": 1, "logprobs": 1, "seed": 1}


# --- once through the gateway ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gateway(server: str) -> Iterator[str]:
    """`python -m infleet.gateway run` in front of the server: the fleet's real entrypoint."""
    port = free_port()
    cmd = [sys.executable, "-m", "infleet.gateway", "run", "--host", "127.0.0.1", "--port", str(port),
           "--upstream", f"{SERVED}={server}"]  # fmt: skip
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.2)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_every_field_through_the_gateway(gateway: str, client: openai.OpenAI) -> None:
    via = openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0, timeout=120)
    ask = dict(
        model=SERVED, prompt=PROMPT, max_tokens=5, n=2, seed=9, temperature=0.8, echo=True, logprobs=2,
        presence_penalty=0.3, frequency_penalty=0.2, logit_bias={"17": -5}, extra_body={"repetition_penalty": 1.1},
    )  # fmt: skip
    through, direct = via.completions.create(**ask).choices, client.completions.create(**ask).choices
    assert [c.text for c in through] == [c.text for c in direct] and len(through) == 2
    for a, b in zip(through, direct, strict=True):
        assert a.logprobs.tokens == b.logprobs.tokens and a.logprobs.text_offset == b.logprobs.text_offset
        assert a.logprobs.token_logprobs[1:] == pytest.approx(b.logprobs.token_logprobs[1:], abs=1e-4)
    chat = dict(model=SERVED, messages=[{"role": "user", "content": PROMPT}], max_tokens=4, temperature=0, n=2)
    chunks = list(
        via.chat.completions.create(
            logprobs=True, top_logprobs=1, stream=True, stream_options={"include_usage": True}, **chat
        )
    )
    whole = client.chat.completions.create(logprobs=True, top_logprobs=1, **chat)
    assert chunks[-1].usage == whole.usage
    streamed = [t for c in chunks if c.choices and c.choices[0].index == 1 for t in c.choices[0].logprobs.content]
    assert same_logprobs(streamed, whole.choices[1].logprobs.content)
    tokens = httpx.post(f"{gateway}/tokenize", json={"model": SERVED, "prompt": PROMPT}).json()["tokens"]
    assert httpx.post(f"{gateway}/detokenize", json={"model": SERVED, "tokens": tokens}).json() == {"prompt": PROMPT}
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        via.chat.completions.create(logprobs=True, top_logprobs=50, **chat)
