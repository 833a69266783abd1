"""The model and engine run with bf16 weights and KV cache (the dtype parameter), close to fp32."""

from __future__ import annotations

import copy
from typing import Any

import torch

from infleet.runtime.config import EngineConfig
from infleet.runtime.engine.engine import LLMEngine
from infleet.runtime.engine.sampler import SamplingParams


def test_bf16_engine_runs_and_tracks_fp32(tiny_llama: Any) -> None:
    model, config, tokenizer = tiny_llama
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    prompt = tokenizer.encode("The quick brown fox jumps over the lazy dog")
    params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    engine = LLMEngine(bf16, config, tokenizer, EngineConfig(max_model_len=256))
    assert engine.runner.kv_caches[0].k.dtype == torch.bfloat16
    engine.add_request("r", prompt, params)
    batch = engine.scheduler.schedule()
    _, logits16 = engine.runner.run(batch)
    ref = LLMEngine(model, config, tokenizer, EngineConfig(max_model_len=256))
    ref.add_request("r", prompt, params)
    _, logits32 = ref.runner.run(ref.scheduler.schedule())
    assert logits16.dtype == torch.float32  # sampling always sees fp32 logits
    spread = float(logits32.max() - logits32.min())
    assert float((logits16 - logits32).abs().max()) < 0.05 * spread
    out = LLMEngine(bf16, config, tokenizer, EngineConfig(max_model_len=256)).generate([prompt], params)[0]
    assert len(out) == 6 and all(0 <= t < config.vocab_size for t in out)
