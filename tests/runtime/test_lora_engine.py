"""Multi-LoRA in the engine: PEFT adapters of two ranks give the tokens of Hugging Face's merged-weights model,
a batch that mixes base and adapter requests gives each the tokens it gets alone, every tier adds the delta, and
bad adapters are refused with the reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from infleet.runtime.config import EngineConfig
from infleet.runtime.engine.engine import LLMEngine
from infleet.runtime.engine.sampler import SamplingParams
from infleet.runtime.loader import load_model
from infleet.runtime.lora.adapter import LoRAError
from infleet.runtime.lora.manager import LoRAManager, UnknownAdapter
from infleet.runtime.quant.tiers import apply_tier

from .lora_fixtures import LoRAModels, make, merged_reference

VOCAB = 512  # ids valid for SmolLM2's tokenizer; sampling stays cheap
NEW = 12
PROMPTS = [[(7 * i + 3 * j) % VOCAB + 1 for j in range(5 + 4 * i)] for i in range(3)]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, save_hf_layout: Any) -> LoRAModels:
    return make(tmp_path_factory.mktemp("lora"), save_hf_layout, VOCAB)


def engine(models: LoRAModels, tier: str = "bf16", max_loras: int = 2, **kwargs: Any) -> LLMEngine:
    model, config, tokenizer = load_model(models.base, dtype=torch.float32)
    model = apply_tier(model, tier)
    lora = LoRAManager(model, max_loras=max_loras, max_rank=8)
    for name, path in models.adapters.items():
        lora.load(name, str(path))
    cfg = EngineConfig(max_model_len=256, max_num_seqs=8, num_kv_blocks=64, tier=tier, **kwargs)
    return LLMEngine(model, config, tokenizer, cfg, lora=lora)


def greedy(adapter: str | None) -> SamplingParams:
    return SamplingParams(max_tokens=NEW, temperature=0.0, ignore_eos=True, adapter=adapter)


@pytest.fixture(scope="module")
def alone(models: LoRAModels) -> dict[str | None, list[list[int]]]:
    """Each prompt through each of base, sql, poet, one request at a time."""
    e = engine(models)
    return {a: [e.generate([p], greedy(a))[0] for p in PROMPTS] for a in (None, "sql", "poet")}


def test_adapters_match_the_merged_weights_reference(models: LoRAModels, alone: Any) -> None:
    for adapter in (None, "sql", "poet"):
        assert alone[adapter] == merged_reference(models, adapter, PROMPTS, NEW), adapter
    for i in range(len(PROMPTS)):  # the adapters change the output, so the equality above means something
        assert alone["sql"][i] != alone[None][i] and alone["poet"][i] != alone[None][i]


def test_a_mixed_batch_gives_each_request_its_tokens_alone(models: LoRAModels, alone: Any) -> None:
    e = engine(models)
    cases = [(p, a) for p in PROMPTS for a in (None, "sql", "poet")]
    out = e.generate([p for p, _ in cases], [greedy(a) for _, a in cases])
    for (p, a), tokens in zip(cases, out, strict=True):
        assert tokens == alone[a][PROMPTS.index(p)], a


def test_one_slot_serves_two_adapters_in_turn(models: LoRAModels, alone: Any) -> None:
    """With --max-loras 1 the scheduler admits one adapter's requests at a time; the LRU slot swaps weights."""
    e = engine(models, max_loras=1)
    out = e.generate([PROMPTS[0]] * 3, [greedy("sql"), greedy("poet"), greedy(None)])
    assert out == [alone["sql"][0], alone["poet"][0], alone[None][0]]
    assert e.lora is not None and len(e.lora.slots) == 1


def test_prefix_cache_keeps_adapters_apart(models: LoRAModels, alone: Any) -> None:
    """The same prompt through base then an adapter must not reuse the base's KV blocks."""
    e = engine(models, block_size=4)
    assert e.generate([PROMPTS[2]], greedy(None))[0] == alone[None][2]
    assert e.generate([PROMPTS[2]], greedy("poet"))[0] == alone["poet"][2]
    assert e.generate([PROMPTS[2]], greedy("poet"))[0] == alone["poet"][2]
    assert e.block_manager.prefix_hits > 0  # the second poet request did hit its own blocks


@pytest.mark.parametrize("tier", ["int8", "int4"])
def test_quantized_tiers_add_the_delta(models: LoRAModels, tier: str) -> None:
    """On a quantized base the adapter's delta is the same float computation: base-tier output + B·A·x."""
    e = engine(models, tier=tier)
    assert e.lora is not None
    layer = e.lora.layers[(0, "q_proj")]
    x = torch.randn(3, layer.in_features)
    a, b = e.lora.by_name["poet"].weights.modules[(0, "q_proj")]
    e.lora.begin([(e.lora.by_name["poet"].serial, 2), (None, 1)])
    try:
        with torch.no_grad():
            got = layer(x)
    finally:
        e.lora.end()
    with torch.no_grad():
        base = layer.base(x)
    assert torch.allclose(got[:2], base[:2] + x[:2] @ a.t() @ b.t(), atol=1e-4)
    assert torch.equal(got[2], base[2])  # the base row pays nothing and gets nothing
    out = e.generate(PROMPTS[:2], [greedy("poet"), greedy(None)])
    assert all(len(t) == NEW for t in out)


def test_unloading_waits_for_running_requests(models: LoRAModels, alone: Any) -> None:
    e = engine(models)
    assert e.lora is not None
    e.add_request("r1", PROMPTS[1], greedy("sql"))
    tokens = [t for o in e.step() for t in o.new_token_ids]
    e.lora.unload("sql")  # a request is still running with it
    with pytest.raises(UnknownAdapter):
        e.add_request("r2", PROMPTS[1], greedy("sql"))
    while e.has_unfinished():
        tokens += [t for o in e.step() for t in o.new_token_ids]
    assert tokens == alone["sql"][1]
    assert not any(a.name == "sql" for a in e.lora.by_serial.values())  # freed once the request ended


def write_adapter(path: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps(config))
    save_file(tensors, str(path / "adapter_model.safetensors"))
    return path


def test_bad_adapters_are_refused_with_the_reason(models: LoRAModels, tmp_path: Path) -> None:
    model, _, _ = load_model(models.base, dtype=torch.float32)
    lora = LoRAManager(model, max_loras=1, max_rank=4)
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_{}.weight"
    ok = {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}
    cases = {
        "is above --max-lora-rank 4": (ok, {key.format("A"): torch.zeros(8, 64), key.format("B"): torch.zeros(64, 8)}),
        "do not fit the model's projection": (
            ok, {key.format("A"): torch.zeros(2, 32), key.format("B"): torch.zeros(64, 2)}
        ),
        "but not both": (ok, {key.format("A"): torch.zeros(2, 64)}),
        "DoRA adapters are not supported": ({**ok, "use_dora": True}, {key.format("A"): torch.zeros(2, 64)}),
        "is not a LoRA of a decoder projection": (ok, {"base_model.model.lm_head.lora_A.weight": torch.zeros(2, 64)}),
        "which this model does not have": (
            ok, {key.format("A").replace("layers.0", "layers.9"): torch.zeros(2, 64)}
        ),
    }  # fmt: skip
    for i, (why, (config, tensors)) in enumerate(cases.items()):
        with pytest.raises(LoRAError, match=why):
            lora.load(f"bad{i}", str(write_adapter(tmp_path / f"bad{i}", config, tensors)))
    with pytest.raises(LoRAError, match=r"no adapter_config\.json"):
        lora.load("empty", str(tmp_path))
    with pytest.raises(LoRAError, match="is not a directory"):
        lora.load("missing", str(tmp_path / "nowhere"))
    lora.load("sql", str(models.adapters["sql"]))
    with pytest.raises(LoRAError, match="already loaded"):
        lora.load("sql", str(models.adapters["sql"]))
    with pytest.raises(UnknownAdapter):
        lora.unload("nope")
    assert [a.name for a in lora.adapters()] == ["sql"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lora-modules", "a=/x"], "--lora-modules needs --enable-lora"),
        (["--enable-lora", "--lora-modules", "a"], "expected NAME=PATH, got 'a'"),
        (["--enable-lora", "--lora-modules", "a=/x", "a=/y"], "adapter names must be unique"),
        (["--enable-lora", "--tensor-parallel", "2"], "--enable-lora is not supported with --tensor-parallel"),
        (["--enable-lora", "--max-lora-rank", "0"], "--max-lora-rank must be at least 1"),
        (["--enable-lora", "--max-loras", "0"], "--max-loras must be at least 1"),
    ],
)
def test_lora_flags_are_checked_before_loading(args: list[str], message: str, capsys: Any) -> None:
    from infleet.runtime.__main__ import main

    assert main(["serve", "--model", "x", *args]) == 2
    assert message in capsys.readouterr().err


def test_a_bad_adapter_at_start_is_one_line_naming_the_flag(models: LoRAModels, tmp_path: Path, capsys: Any) -> None:
    from infleet.runtime.__main__ import main
    from infleet.runtime.server.launch import free_port

    args = ["serve", "--model", str(models.base), "--threads", "1", "--enable-lora", "--lora-modules", f"x={tmp_path}"]
    assert main([*args, "--host", "127.0.0.1", "--port", str(free_port())]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--lora-modules:" in err[0] and "adapter_config.json" in err[0], err
