"""infleet's runtime on one GPU, each tier, side by side with vLLM on the same weights when vLLM is importable.

For every tier (bf16, fp8, int8, int4): decode tokens/s at batch 1, 8 and 64 (greedy, end-of-sequence ignored, a
32-token prompt per sequence, tokens after the first counted) with the model-bandwidth utilisation (bytes a
decode step must read, weights + KV, times decode steps/s, over the GPU's device-to-device copy bandwidth measured
here), and the time to first token of a 2,048-token prompt. The engine runs in this process (no HTTP), with CUDA
graphs unless --enforce-eager. vLLM gets the same prompts and lengths (bf16 only: its quantized formats are not
this project's). Prints the issue's goals as met / not met / not measured, and writes JSON (--out).

Without a CUDA GPU it says so and exits with code 3, which is not a pass. Sized to finish within 8 minutes on one
GPU for SmolLM2-135M (the default model); a larger --model takes longer.

    python benchmarks/runtime_gpu.py [--model PATH] [--tiers bf16 int4] [--out FILE] [--decode-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

NO_GPU = 3
BATCHES = (1, 8, 64)
TIERS = ("bf16", "fp8", "int8", "int4")
PROMPT_LEN = 32
TTFT_PROMPT_LEN = 2048


def copy_bandwidth(gib: float = 1.0) -> float:
    """Bytes/s of a device-to-device copy (read + write), best of 5: the bandwidth MBU is measured against."""
    src = torch.empty(int(gib * 2**30), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        torch.cuda.synchronize()
        start = time.perf_counter()
        dst.copy_(src)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * gib * 2**30 / best


def prompts(n: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, vocab - 1, (n, length), generator=g).tolist()


def infleet_tier(model: Path, tier: str, args: argparse.Namespace, bandwidth: float) -> dict[str, Any]:
    from infleet.runtime.config import EngineConfig
    from infleet.runtime.engine.engine import AsyncEngine
    from infleet.runtime.engine.model_runner import kv_bytes_per_token
    from infleet.runtime.engine.sampler import SamplingParams
    from infleet.runtime.quant.tiers import model_bytes

    cfg = EngineConfig(
        model=str(model), tier=tier, device="cuda", enforce_eager=args.enforce_eager, max_num_seqs=max(BATCHES),
        max_batch_tokens=4096, max_prefill_tokens=4096,
    )  # fmt: skip
    wrapper = AsyncEngine.from_config(cfg)
    engine = wrapper.engine
    weights = model_bytes(engine.model)
    kv_per_token = kv_bytes_per_token(engine.model, next(engine.model.parameters()).dtype)
    vocab = engine.config.vocab_size
    out: dict[str, Any] = {"execution": wrapper.execution, "weight_bytes": weights, "decode": {}}
    for batch in BATCHES:
        ids = prompts(batch, PROMPT_LEN, vocab)
        params = SamplingParams(max_tokens=args.decode_tokens, temperature=0.0, ignore_eos=True)
        engine.generate(ids[:1], SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))  # warm-up
        for i, p in enumerate(ids):
            engine.add_request(f"b{batch}-{i}", p, params)
        while any(s.first_token_time is None for s in engine.requests.values()):
            engine.step()  # prefill (and first tokens)
        torch.cuda.synchronize()
        start, steps = time.perf_counter(), 0
        while engine.has_unfinished():
            engine.step()
            steps += 1
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
        tokens = batch * (args.decode_tokens - 1)
        mean_ctx = PROMPT_LEN + args.decode_tokens / 2
        step_bytes = weights + batch * mean_ctx * kv_per_token
        out["decode"][str(batch)] = {
            "tokens_per_s": tokens / wall,
            "steps_per_s": steps / wall,
            "mbu": step_bytes * steps / wall / bandwidth,
        }
    ttft_prompt = prompts(1, TTFT_PROMPT_LEN, vocab, seed=1)
    engine.generate(ttft_prompt, SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True))  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    engine.generate(prompts(1, TTFT_PROMPT_LEN, vocab, seed=2), SamplingParams(max_tokens=1, temperature=0.0))
    torch.cuda.synchronize()
    out["ttft_2k_s"] = time.perf_counter() - start
    del wrapper, engine
    torch.cuda.empty_cache()
    return out


def vllm_bf16(model: Path, args: argparse.Namespace, vocab: int) -> dict[str, Any]:
    """vLLM's offline engine on the same file, bf16, the same prompts and lengths."""
    from vllm import LLM
    from vllm import SamplingParams as VParams
    from vllm.inputs import TokensPrompt

    kwargs: dict[str, Any] = {"dtype": "bfloat16", "enforce_eager": args.enforce_eager, "gpu_memory_utilization": 0.5}
    if model.suffix == ".gguf":
        kwargs["tokenizer"] = str(model.parent)
    llm = LLM(model=str(model), **kwargs)
    out: dict[str, Any] = {"decode": {}}
    for batch in BATCHES:
        ids = [TokensPrompt(prompt_token_ids=p) for p in prompts(batch, PROMPT_LEN, vocab)]
        first = VParams(max_tokens=1, temperature=0.0, ignore_eos=True)
        full = VParams(max_tokens=args.decode_tokens, temperature=0.0, ignore_eos=True)
        llm.generate(ids, first, use_tqdm=False)  # warm-up
        start = time.perf_counter()
        llm.generate(ids, first, use_tqdm=False)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        llm.generate(ids, full, use_tqdm=False)
        wall = time.perf_counter() - start - prefill  # decode only, as for infleet
        out["decode"][str(batch)] = {"tokens_per_s": batch * (args.decode_tokens - 1) / wall}
    ttft = [TokensPrompt(prompt_token_ids=prompts(1, TTFT_PROMPT_LEN, vocab, seed=2)[0])]
    start = time.perf_counter()
    llm.generate(ttft, VParams(max_tokens=1, temperature=0.0), use_tqdm=False)
    out["ttft_2k_s"] = time.perf_counter() - start
    return out


def goals(results: dict[str, Any]) -> list[str]:
    """The issue's goals, each "met", "not met" or "not measured"."""
    tiers, lines = results["infleet"], []
    bf16 = tiers.get("bf16", {}).get("decode", {}).get("1")
    if bf16 is None:
        lines.append("bf16 decode MBU at batch 1 >= 70%: not measured")
    else:
        verdict = "met" if bf16["mbu"] >= 0.70 else "not met"
        lines.append(f"bf16 decode MBU at batch 1 >= 70%: {verdict} ({bf16['mbu']:.1%})")
    int4 = tiers.get("int4", {}).get("decode", {}).get("1")
    if bf16 is None or int4 is None:
        lines.append("int4 decode at batch 1 >= 2.5x bf16: not measured")
    else:
        ratio = int4["tokens_per_s"] / bf16["tokens_per_s"]
        lines.append(f"int4 decode at batch 1 >= 2.5x bf16: {'met' if ratio >= 2.5 else 'not met'} ({ratio:.2f}x)")
    ours = tiers.get("bf16", {}).get("decode", {}).get("64")
    theirs = results.get("vllm", {}).get("decode", {}).get("64")
    if ours is None or theirs is None:
        lines.append("batch-64 throughput within 20% of vLLM: not measured")
    else:
        ratio = ours["tokens_per_s"] / theirs["tokens_per_s"]
        lines.append(f"batch-64 throughput within 20% of vLLM: {'met' if ratio >= 0.8 else 'not met'} ({ratio:.2f}x)")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=None, help="GGUF file or HF directory (default: SmolLM2-135M)")
    p.add_argument("--tiers", nargs="+", choices=TIERS, default=list(TIERS))
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs (for infleet and vLLM)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/runtime_gpu.json"))
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("runtime_gpu: no CUDA GPU here (torch.cuda.is_available() is False); nothing measured", file=sys.stderr)
        return NO_GPU
    if args.model is None:
        from infleet.runtime.loader.smollm2 import smollm2_gguf

        args.model = smollm2_gguf()
    started = time.perf_counter()
    bandwidth = copy_bandwidth()
    results: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(),
        "copy_bandwidth_bytes_per_s": bandwidth,
        "model": str(args.model),
        "decode_tokens": args.decode_tokens,
        "infleet": {},
    }
    print(f"{results['gpu']}: device-to-device copy {bandwidth / 1e9:.0f} GB/s", flush=True)
    for tier in args.tiers:
        results["infleet"][tier] = r = infleet_tier(args.model, tier, args, bandwidth)
        rates = ", ".join(f"b{b} {d['tokens_per_s']:.0f} tok/s (MBU {d['mbu']:.0%})" for b, d in r["decode"].items())
        print(f"infleet {tier}: {rates}; TTFT 2k {r['ttft_2k_s'] * 1e3:.0f} ms [{r['execution']['gemm']}]", flush=True)
    try:
        import vllm  # noqa: F401
    except ImportError:
        print("vllm is not importable: no side-by-side run", flush=True)
    else:
        from infleet.runtime.parallel.loading import read_metadata

        vocab = read_metadata(args.model)[0].vocab_size
        results["vllm"] = v = vllm_bf16(args.model, args, vocab)
        rates = ", ".join(f"b{b} {d['tokens_per_s']:.0f} tok/s" for b, d in v["decode"].items())
        print(f"vllm bf16: {rates}; TTFT 2k {v['ttft_2k_s'] * 1e3:.0f} ms", flush=True)
    results["goals"] = goals(results)
    results["wall_s"] = time.perf_counter() - started
    for line in results["goals"]:
        print(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out} ({results['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
