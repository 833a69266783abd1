"""AsyncEngine: streaming, client disconnects free blocks, the bounded queue, draining shutdown."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from infleet.runtime.config import EngineConfig
from infleet.runtime.engine.engine import AsyncEngine, EngineClosed, LLMEngine, QueueFull, RequestOutput
from infleet.runtime.engine.sampler import SamplingParams


def make_async(tiny_llama: Any, **kwargs: Any) -> AsyncEngine:
    model, config, tokenizer = tiny_llama
    cfg = EngineConfig(max_model_len=256, **{"max_waiting": 16, **kwargs})
    return AsyncEngine(LLMEngine(model, config, tokenizer, cfg))


async def collect(engine: AsyncEngine, prompt: list[int], params: SamplingParams, rid: str) -> list[RequestOutput]:
    return [out async for out in engine.generate(prompt, params, rid)]


def test_streams_incremental_outputs_until_length(tiny_llama: Any) -> None:
    async def main() -> None:
        engine = make_async(tiny_llama)
        tokenizer = engine.tokenizer
        prompt = tokenizer.encode("Hello there")
        outs = await collect(engine, prompt, SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True), "a")
        await engine.shutdown()
        assert len(outs) == 12 and all(len(o.new_token_ids) == 1 for o in outs)
        assert [o.completion_tokens for o in outs] == list(range(1, 13))
        assert outs[-1].finished and outs[-1].finish_reason == "length"
        assert not any(o.finished for o in outs[:-1])
        ids = [t for o in outs for t in o.new_token_ids]
        assert "".join(o.new_text for o in outs) == tokenizer.decode(ids)
        assert outs[0].prompt_tokens == len(prompt)

    asyncio.run(main())


def test_concurrent_requests_match_the_sync_engine(tiny_llama: Any) -> None:
    model, config, tokenizer = tiny_llama
    prompts = [tokenizer.encode(t) for t in ["a", "The cat sat on the mat and", "1 2 3 4 5 6 7 8 9 10 11 12"]]
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    expected = LLMEngine(model, config, tokenizer, EngineConfig(max_model_len=256)).generate(prompts, params)

    async def main() -> list[list[int]]:
        engine = make_async(tiny_llama)
        results = await asyncio.gather(*(collect(engine, p, params, f"r{i}") for i, p in enumerate(prompts)))
        await engine.shutdown()
        return [[t for o in outs for t in o.new_token_ids] for outs in results]

    assert asyncio.run(main()) == expected


def test_closing_the_stream_aborts_and_frees_blocks(tiny_llama: Any) -> None:
    async def main() -> None:
        engine = make_async(tiny_llama)
        stream = engine.generate([5, 6, 7] * 10, SamplingParams(max_tokens=200, ignore_eos=True), "gone")
        first = await stream.__anext__()
        assert not first.finished
        await stream.aclose()  # what the server does when the client disconnects
        for _ in range(500):
            stats = engine.engine.stats()
            if stats.running == 0 and stats.kv_cache_usage == 0.0:
                break
            await asyncio.sleep(0.01)
        assert engine.engine.stats().running == 0 and engine.engine.stats().kv_cache_usage == 0.0
        assert engine.num_unfinished() == 0
        await engine.shutdown()

    asyncio.run(main())


def test_queue_bound_rejects_with_queue_full(tiny_llama: Any) -> None:
    async def main() -> None:
        engine = make_async(tiny_llama, max_num_seqs=1, max_waiting=2)
        params = SamplingParams(max_tokens=240, ignore_eos=True)
        running = engine.generate([1, 2, 3], params, "running")
        await running.__anext__()  # it holds the only sequence slot from now on
        waiting = [engine.generate([1, 2, 3], params, f"w{i}") for i in range(2)]
        tasks = [asyncio.ensure_future(s.__anext__()) for s in waiting]
        await asyncio.sleep(0)  # both are submitted and wait behind it
        with pytest.raises(QueueFull):
            await engine.generate([1, 2, 3], params, "one-too-many").__anext__()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # cancelling a pending read aborts its request
        await running.aclose()
        await engine.shutdown(timeout=30)
        assert engine.engine.stats().kv_cache_usage == 0.0

    asyncio.run(main())


def test_bad_parameters_raise_value_error_naming_the_field(tiny_llama: Any) -> None:
    async def main() -> None:
        engine = make_async(tiny_llama)
        with pytest.raises(ValueError, match=r"^max_tokens: "):
            await engine.generate([1, 2], SamplingParams(max_tokens=10_000), "x").__anext__()
        with pytest.raises(ValueError, match=r"^prompt: token ids must be in"):
            await engine.generate([10**9], SamplingParams(max_tokens=2), "y").__anext__()
        await engine.shutdown()

    asyncio.run(main())


def test_shutdown_drains_in_flight_requests_then_refuses_new_ones(tiny_llama: Any) -> None:
    async def main() -> None:
        engine = make_async(tiny_llama)
        params = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
        task = asyncio.ensure_future(collect(engine, [4, 5, 6], params, "inflight"))
        await asyncio.sleep(0.05)
        await engine.shutdown(timeout=60)
        outs = await task
        assert outs[-1].finished and outs[-1].finish_reason == "length" and outs[-1].completion_tokens == 20
        with pytest.raises(EngineClosed):
            await engine.generate([1], params, "late").__anext__()

    asyncio.run(main())
