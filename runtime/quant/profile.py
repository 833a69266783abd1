"""Measure each quantization tier on one model and device; write the tier profile the autoscaler's chooser reads.

    python -m infleet.runtime.quant.profile --out runtime/quant/profiles/smollm2-135m-cpu.json

Each tier is measured as the runtime serves it on a CPU (`infleet.runtime.config.compute_dtype_name`): bf16 with
bf16 weights and activations, the weight-only tiers over float32 activations. Quality is measured against the
float32 model (the weights as loaded: for a GGUF, its dequantized weights):
- perplexity on `data/eval_text.txt` (plain English written for this project), in non-overlapping windows;
- greedy-match rate: the reference's greedy continuation of each prompt in `data/prompts.json` is fed to the tier
  model, and the rate is the share of those positions where the tier's top-1 token agrees (teacher-forced, so one
  early disagreement does not decide the rest);
- greedy prefix match: each tier generates freely; the mean share of leading tokens identical to the reference's.
Speed: decode tokens/s through the real engine (continuous batching, paged KV cache) at each batch size, greedy,
`ignore_eos`, prefill excluded; MBU = bytes read per decode step / step time / DRAM read bandwidth (measured in the
same run unless `--bandwidth-gbs` is given). Prefill tokens/s: one prompt of `--prefill-tokens` tokens (from the eval
text) until its first token, alone in the engine. Together they give one replica's tokens/s (prompt + output) at any
request mix: `infleet.autoscaler.tiers.TierOption.at_mix`.

Schema (`infleet.tier-profile/v1`; `gpu` and the `tiers` mapping with `capacity_tokens_per_second`, `quality_loss`
and `memory_bytes` are what `infleet.autoscaler.tiers.load_profile` reads):

    {"schema": "infleet.tier-profile/v1", "model": str, "model_file": str, "device": "cpu" | "cuda",
     "gpu": str (accelerator name; "cpu" here), "device_detail": str, "threads": int,
     "created": ISO-8601 UTC, "baseline": "fp32",
     "eval": {"text": str, "text_tokens": int, "window": int, "prompts": int, "greedy_tokens": int,
              "decode_tokens": int, "batches": [int], "prefill_tokens": int, "bandwidth_gbs": float,
              "bandwidth_measured": bool},
     "tiers": {"<tier>": {
         "activation_dtype": str   # as served on this device
         "quality_loss": float     # relative perplexity rise over the fp32 reference, max(ppl / ppl_fp32 - 1, 0)
         "perplexity": float, "reference_perplexity": float,
         "greedy_match_rate": float (0..1), "greedy_prefix_match": float (0..1),
         "memory_bytes": int       # weights resident: parameters and buffers, shared tensors once
         "weight_bytes_per_step": int  # what one decode step reads (the embedding table only if tied to lm_head)
         "group_size": int | null, "group_size_reason": str | null, "layers_quantized": int,
         "decode_tokens_per_second": {"<batch>": float}, "mbu": {"<batch>": float},
         "capacity_tokens_per_second": float  # the largest batch's decode tokens/s: one replica's decode throughput
         "prefill_tokens_per_second": float   # one prompt's prefill tokens/s
     }}}
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from infleet.runtime.config import EngineConfig, ModelConfig, compute_dtype_name
from infleet.runtime.engine.engine import LLMEngine
from infleet.runtime.engine.sampler import SamplingParams
from infleet.runtime.kernels import dispatch
from infleet.runtime.loader import load_model
from infleet.runtime.model.attention import AttentionMetadata, KVCache
from infleet.runtime.model.llama import LlamaForCausalLM, fuse_projections
from infleet.runtime.quant.tiers import TIERS, TierInfo, apply_tier, model_bytes
from infleet.runtime.tokenizer import Tokenizer

DATA = Path(__file__).parent / "data"
SCHEMA = "infleet.tier-profile/v1"
BLOCK_SIZE = 16


def embedding(model: nn.Module) -> nn.Module:
    """nn.Embedding, or the tiers' Int8Embedding (a tied head in int8); both hold their table as `weight`."""
    return cast(nn.Module, model.model.embed_tokens)  # type: ignore[union-attr]


def float_dtype(model: nn.Module) -> torch.dtype:
    """The activation (and KV-cache) dtype: the final norm's, which no tier quantizes."""
    return cast(torch.dtype, model.model.norm.weight.dtype)  # type: ignore[union-attr]


@torch.inference_mode()
def logits_for(model: LlamaForCausalLM, ids: list[int]) -> torch.Tensor:
    """Logits [len(ids), vocab] of one fresh sequence (a single prefill through the paged-attention path), computed
    as the engine computes a prompt (`dispatch.prompt_rows`)."""
    c = model.config
    blocks = -(-len(ids) // BLOCK_SIZE)
    dtype = float_dtype(model)
    caches = [
        KVCache.allocate(blocks, BLOCK_SIZE, c.num_key_value_heads, c.head_dim, dtype) for _ in range(model.num_layers)
    ]
    meta = AttentionMetadata.build([len(ids)], [len(ids)], [list(range(blocks))], BLOCK_SIZE)
    with dispatch.prompt_rows(dispatch.prompt_mask([(len(ids), 0, len(ids))])):
        hidden = model(torch.tensor(ids), torch.arange(len(ids)), caches, meta)
    return model.compute_logits(hidden)


def perplexity(model: LlamaForCausalLM, ids: list[int], window: int) -> float:
    nll, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start : start + window + 1]
        if len(chunk) < 2:
            break
        logp = torch.log_softmax(logits_for(model, chunk[:-1]), dim=-1)
        nll -= logp.gather(1, torch.tensor(chunk[1:])[:, None]).sum().item()
        count += len(chunk) - 1
    return float(torch.exp(torch.tensor(nll / count)))


def teacher_forced_match(model: LlamaForCausalLM, prompts: list[list[int]], references: list[list[int]]) -> float:
    agree = total = 0
    for prompt, ref in zip(prompts, references, strict=True):
        logits = logits_for(model, prompt + ref[:-1])
        predicted = logits[len(prompt) - 1 :].argmax(dim=-1).tolist()
        agree += sum(p == r for p, r in zip(predicted, ref, strict=True))
        total += len(ref)
    return agree / total


def prefix_match(outputs: list[list[int]], references: list[list[int]]) -> float:
    shares = []
    for out, ref in zip(outputs, references, strict=True):
        same = 0
        while same < min(len(out), len(ref)) and out[same] == ref[same]:
            same += 1
        shares.append(same / len(ref))
    return sum(shares) / len(shares)


def make_engine(model: LlamaForCausalLM, config: Any, tokenizer: Any, max_num_seqs: int) -> LLMEngine:
    cfg = EngineConfig(max_num_seqs=max_num_seqs, max_model_len=512, block_size=BLOCK_SIZE, prefix_caching=False)
    return LLMEngine(model, config, tokenizer, cfg, kv_dtype=float_dtype(model))


def greedy(engine: LLMEngine, prompts: list[list[int]], tokens: int) -> list[list[int]]:
    return engine.generate(prompts, SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True))


def decode_tokens_per_second(engine: LLMEngine, prompt: list[int], batch: int, tokens: int, repeats: int) -> float:
    """Best of `repeats` runs (the least disturbed by other load on a shared machine); prefill step excluded."""
    best = 0.0
    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    for r in range(repeats):
        for i in range(batch):
            engine.add_request(f"speed-{r}-{i}", prompt, params)
        engine.step()  # the prefill of every prompt (one step: they fit the token budget)
        produced, start = 0, time.perf_counter()
        while engine.has_unfinished():
            produced += sum(len(o.new_token_ids) for o in engine.step())
        best = max(best, produced / (time.perf_counter() - start))
    return best


def prefill_tokens_per_second(engine: LLMEngine, prompt: list[int], repeats: int) -> float:
    """Best of `repeats`: one prompt from arrival to its first token, alone in the engine (chunked if it must be)."""
    best = 0.0
    params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    for r in range(repeats):
        start = time.perf_counter()
        engine.add_request(f"prefill-{r}", prompt, params)
        while engine.has_unfinished():
            engine.step()
        best = max(best, len(prompt) / (time.perf_counter() - start))
    return best


def bytes_per_decode_step(model: nn.Module) -> int:
    """Weights a decode step reads: everything but the embedding table, unless the lm_head reads it as its weight."""
    total = model_bytes(model)
    embed = cast(torch.Tensor, embedding(model).weight)
    head = getattr(model.lm_head, "weight", None)
    if head is None or head.data_ptr() != embed.data_ptr():
        total -= embed.numel() * embed.element_size()
    return total


def read_bandwidth_gbs(gib: float = 1.0) -> float:
    """DRAM read bandwidth, GB/s: a streaming sum over a buffer much larger than the caches, best of three."""
    x = torch.ones(int(gib * 2**30 / 4), dtype=torch.float32)
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        x.sum()
        best = max(best, x.numel() * 4 / (time.perf_counter() - start))
    return best / 1e9


def served_model(path: str | Path, tier: str) -> tuple[LlamaForCausalLM, ModelConfig, Tokenizer]:
    """The model as the runtime serves `tier` on a CPU: loaded in the tier's activation dtype, its projections
    fused, then quantized."""
    model, config, tokenizer = load_model(path, dtype=getattr(torch, compute_dtype_name(tier, "cpu")))
    model.eval()
    return apply_tier(fuse_projections(model), tier), config, tokenizer


def profile(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    reference, config, tokenizer = load_model(args.model, dtype=torch.float32)  # the quality reference
    reference.eval()
    text_ids = tokenizer.encode((DATA / "eval_text.txt").read_text(), add_special_tokens=False)
    prompts = [tokenizer.encode(p) for p in json.loads((DATA / "prompts.json").read_text())]
    speed_prompt = tokenizer.encode("Once upon a time")
    prefill_prompt = text_ids[: args.prefill_tokens]
    batches = [int(b) for b in args.batches.split(",")]
    bandwidth = args.bandwidth_gbs or read_bandwidth_gbs()
    result: dict[str, Any] = {
        "schema": SCHEMA, "model": config.name, "model_file": Path(args.model).name, "device": "cpu", "gpu": "cpu",
        "device_detail": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "threads": torch.get_num_threads(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "baseline": "fp32",
        "eval": {"text": "runtime/quant/data/eval_text.txt", "text_tokens": len(text_ids), "window": args.window,
                 "prompts": len(prompts), "greedy_tokens": args.greedy_tokens, "decode_tokens": args.decode_tokens,
                 "batches": batches, "prefill_tokens": len(prefill_prompt), "bandwidth_gbs": round(bandwidth, 2),
                 "bandwidth_measured": not args.bandwidth_gbs},
        "tiers": {},
    }  # fmt: skip
    references = greedy(make_engine(reference, config, tokenizer, len(prompts)), prompts, args.greedy_tokens)
    base_ppl = perplexity(reference, text_ids, args.window)
    del reference
    for tier in args.tiers.split(","):
        model = served_model(args.model, tier)[0]
        info = cast(TierInfo, model.tier_info)
        engine = make_engine(model, config, tokenizer, max([*batches, len(prompts)]))
        outputs = greedy(engine, prompts, args.greedy_tokens)
        ppl = perplexity(model, text_ids, args.window)
        step_bytes = bytes_per_decode_step(model)
        speed = {
            b: decode_tokens_per_second(engine, speed_prompt, b, args.decode_tokens, args.repeats) for b in batches
        }
        entry = {
            "activation_dtype": str(float_dtype(model)),
            "quality_loss": round(max(ppl / base_ppl - 1, 0.0), 5),
            "perplexity": round(ppl, 4),
            "reference_perplexity": round(base_ppl, 4),
            "greedy_match_rate": round(teacher_forced_match(model, prompts, references), 4),
            "greedy_prefix_match": round(prefix_match(outputs, references), 4),
            "memory_bytes": info.weight_bytes,
            "weight_bytes_per_step": step_bytes,
            "group_size": info.group_size,
            "group_size_reason": info.group_size_reason,
            "layers_quantized": info.layers,
            "decode_tokens_per_second": {str(b): round(s, 2) for b, s in speed.items()},
            "mbu": {str(b): round(step_bytes * s / b / (bandwidth * 1e9), 3) for b, s in speed.items()},
            "capacity_tokens_per_second": round(speed[max(batches)], 2),
            "prefill_tokens_per_second": round(prefill_tokens_per_second(engine, prefill_prompt, args.repeats), 1),
        }
        result["tiers"][tier] = entry
        print(f"{tier:5s} {json.dumps(entry)}", file=sys.stderr, flush=True)
        del engine, model
    return result


def main(argv: list[str] | None = None) -> int:
    from infleet.runtime.loader.smollm2 import smollm2_gguf

    p = argparse.ArgumentParser(prog="python -m infleet.runtime.quant.profile", description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="GGUF file or HF directory (default: SmolLM2-135M-Instruct)")
    p.add_argument("--out", required=True, help="where to write the tier profile JSON")
    p.add_argument("--tiers", default=",".join(TIERS), help="comma-separated")
    p.add_argument("--window", type=int, default=256, help="perplexity window in tokens")
    p.add_argument("--greedy-tokens", type=int, default=32)
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--batches", default="1,8", help="decode batch sizes to time")
    p.add_argument("--prefill-tokens", type=int, default=256, help="prompt length whose prefill is timed")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per batch size (the best is kept)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--bandwidth-gbs", type=float, default=None, help="DRAM read bandwidth for MBU (default: measured)")
    args = p.parse_args(argv)
    args.model = args.model or str(smollm2_gguf())
    if args.threads:
        torch.set_num_threads(args.threads)
    unknown = set(args.tiers.split(",")) - set(TIERS)
    if unknown:
        p.error(f"unknown tier(s) {sorted(unknown)}; choose from {', '.join(TIERS)}")
    result = profile(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
