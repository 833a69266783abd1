"""The step loop (`LLMEngine`, synchronous) and its asyncio face (`AsyncEngine`, a background thread).

One step, as in nano-vllm: the scheduler picks sequences and token counts, the model runner computes them in one
forward pass, the sampler draws a token for every sequence that reached its end, the scheduler's `postprocess`
appends each token and ends the sequences that are done, and each one's text delta is handed out (text that could
still become a stop string is held back until it cannot).

A request with `n` > 1 choices is prefilled once. When its prompt is computed, the engine forks it (`_fork`): each
other choice is a new sequence whose block table shares the prompt's full KV blocks (reference counts, no copy)
and which draws its first token from the same prompt logits with its own generator (seed + index when seeded).
Only the prompt's last, partly filled block is not shared, since every choice writes its own next token there:
each fork recomputes those few tokens (fewer than a block) with its first decode. Forks join the running batch at
once (a request is admitted whole, so they may take it past `max_num_seqs` for a while; new requests then wait), and
like any sequence they are preempted and recomputed when blocks run out.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from infleet.runtime.config import EngineConfig, ModelConfig
from infleet.runtime.engine.draft import DraftModel, check_compatible
from infleet.runtime.engine.kv_cache import BlockManager
from infleet.runtime.engine.memory import kv_cache_budget
from infleet.runtime.engine.memory import num_kv_blocks as fit_kv_blocks
from infleet.runtime.engine.model_runner import ModelRunner, kv_bytes_per_token
from infleet.runtime.engine.sampler import SamplingParams, TokenLogprob, draw, process, token_logprobs
from infleet.runtime.engine.scheduler import ScheduledSequence, Scheduler
from infleet.runtime.engine.sequence import Sequence
from infleet.runtime.engine.speculative import SpeculativeStats, Speculator
from infleet.runtime.engine.structured import Grammars, Matcher
from infleet.runtime.model.llama import LlamaForCausalLM, fuse_projections
from infleet.runtime.tokenizer import Tokenizer

if TYPE_CHECKING:
    from infleet.runtime.lora.manager import LoRAManager
    from infleet.runtime.metrics import RuntimeMetrics
    from infleet.runtime.quant.tiers import TierInfo

log = logging.getLogger(__name__)


@dataclass
class RequestOutput:
    """Incremental: one per step in which the request produced tokens (or ended)."""

    request_id: str
    new_token_ids: list[int]
    new_text: str  # detokenized delta; stop strings are trimmed and never emitted
    finished: bool
    finish_reason: str | None  # "stop" | "length" | "abort"
    prompt_tokens: int
    completion_tokens: int  # cumulative, this choice's
    index: int = 0  # the choice (n > 1) this output belongs to
    request_done: bool = True  # every choice of the request has finished (n = 1: the same as `finished`)
    new_logprobs: list[TokenLogprob] = field(default_factory=list)  # for new_token_ids, when asked for
    prompt_logprobs: list[TokenLogprob] | None = None  # once, with the first output, when asked for


@dataclass
class EngineStats:
    running: int
    waiting: int
    kv_cache_usage: float  # 0..1, blocks referenced by live sequences
    num_kv_blocks: int
    prefix_cache_queries: int  # prompt tokens looked up in the prefix cache (cumulative)
    prefix_cache_hits: int  # of those, tokens served from it
    preemptions: int


class QueueFull(Exception):
    """The waiting queue is at its bound; the caller should shed load (HTTP 429 with Retry-After)."""


class EngineClosed(Exception):
    """The engine is shutting down and admits no new requests."""


def apply_tier(model: LlamaForCausalLM, tier: str) -> LlamaForCausalLM:
    """The one place where the loaded float model becomes a quantization tier ("bf16": the float weights as loaded,
    on a CPU with AVX512-BF16 repacked for infleet's kernel)."""
    try:
        from infleet.runtime.quant import tiers
    except ImportError as exc:
        if tier == "bf16":
            return model
        raise ValueError(f"tier {tier!r} is not available: {exc}") from exc
    converted: LlamaForCausalLM = tiers.apply_tier(model, tier)
    return converted


def apply_kernels(cfg: EngineConfig) -> None:
    """Make the process-wide kernel choice (`--kernels`, resolved) before the tier picks its weight layouts."""
    from infleet.runtime.kernels import dispatch

    dispatch.set_backend(cfg.kernels)


def execution_info(model: torch.nn.Module, tier: str, cuda_graphs: bool = False) -> dict[str, object]:
    """What actually computes, read off the loaded tensors and the kernel choice (for /v1/models, logs, metrics)."""
    from infleet.runtime.kernels import dispatch

    params = list(model.parameters())
    device = params[0].device
    floats = [p.dtype for p in params if p.is_floating_point()]
    stored = {t.dtype for t in model.state_dict().values()}  # weights as loaded (not the RoPE tables)
    triton_ = dispatch.backend() == "triton" or (dispatch.backend() == "auto" and device.type == "cuda")
    return {
        "device": str(device),
        "compute_dtype": str(floats[0]).removeprefix("torch.") if floats else "unknown",
        "weight_dtypes": sorted(str(d).removeprefix("torch.") for d in stored),
        "kernel_backend": "triton" if triton_ else "torch",
        "attention": dispatch.attention_backend(device),
        "gemm": dispatch.gemm_backend(tier, device),
        "cuda_graphs": cuda_graphs,
        "threads": torch.get_num_threads(),  # intra-op threads (runtime/threads.py)
    }


def _holdback(text: str, stops: list[str]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of a stop string (it may still complete)."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


class LLMEngine:
    def __init__(
        self,
        model: LlamaForCausalLM,
        config: ModelConfig,
        tokenizer: Tokenizer,
        engine_config: EngineConfig | None = None,
        *,
        kv_dtype: torch.dtype | None = None,
        metrics: RuntimeMetrics | None = None,
        runner: ModelRunner | None = None,
        draft: tuple[LlamaForCausalLM, ModelConfig, Tokenizer] | None = None,
        lora: LoRAManager | None = None,
    ) -> None:
        """Drive a loaded model (`from_config` loads one). `engine_config` sizes the batch and the KV cache (when
        its `num_kv_blocks` is None) and turns CUDA graphs on; `runner` replaces the in-process model runner (tensor
        and pipeline parallelism pass their own); `draft` is the loaded draft model of `--speculative-method draft`;
        `lora` the adapter manager that wrapped `model`'s projections (`--enable-lora`)."""
        cfg = engine_config or EngineConfig()
        self.model = model
        self.config = config
        self.engine_config = cfg
        self.tokenizer = tokenizer
        self.metrics = metrics
        if lora is not None and runner is not None:
            raise ValueError("LoRA adapters need the in-process model runner (no tensor or pipeline parallelism)")
        self.lora = lora
        kv_dtype = kv_dtype or next(model.parameters()).dtype
        max_len = min(cfg.max_model_len or config.max_position_embeddings, config.max_position_embeddings)
        num_kv_blocks = cfg.num_kv_blocks
        self.kv_budget = ""
        if num_kv_blocks is None:
            budget, self.kv_budget = kv_cache_budget(cfg, next(model.parameters()).device)
            per_block = kv_bytes_per_token(model, kv_dtype) * cfg.block_size
            num_kv_blocks = fit_kv_blocks(budget, per_block, cfg.max_num_seqs, max_len, cfg.block_size)
        # A sequence alone must always fit, or it could never finish.
        self.max_model_len = min(max_len, num_kv_blocks * cfg.block_size)
        self.block_manager = BlockManager(num_kv_blocks, cfg.block_size, cfg.prefix_caching)
        self.eos_token_ids = set(tokenizer.eos_token_ids) | set(config.eos_token_ids)
        self.scheduler = Scheduler(
            self.block_manager,
            max_batch_tokens=cfg.max_batch_tokens,
            max_num_seqs=cfg.max_num_seqs,
            max_prefill_tokens=cfg.max_prefill_tokens,
            eos_token_ids=self.eos_token_ids,
            max_model_len=self.max_model_len,
            max_adapters=None if lora is None else lora.max_loras,
        )
        self.runner = runner or ModelRunner(
            model,
            num_blocks=num_kv_blocks,
            block_size=cfg.block_size,
            kv_dtype=kv_dtype,
            enforce_eager=cfg.enforce_eager,
            max_model_len=self.max_model_len,
            lora=lora,
        )
        self.speculator = (
            Speculator(
                cfg.speculative_num_tokens,
                cfg.speculative_max_batch_size,
                self.max_model_len,
                draft_model=self._draft_model(draft, num_kv_blocks, kv_dtype),
            )
            if cfg.speculative_method
            else None
        )
        self.requests: dict[str, Sequence] = {}
        self._grammars: Grammars | None = None
        self._grammars_lock = threading.Lock()
        self._reported = (0, 0, 0)  # prefix queries, hits, preemptions already passed to metrics
        self._reported_spec = SpeculativeStats()

    def _draft_model(
        self,
        draft: tuple[LlamaForCausalLM, ModelConfig, Tokenizer] | None,
        num_kv_blocks: int,
        kv_dtype: torch.dtype,
    ) -> DraftModel | None:
        """The draft model's drafter, its KV pool holding as many blocks as the target's plus k tokens' worth per
        sequence (a draft runs k-1 tokens ahead); ValueError when the settings and the loaded draft disagree."""
        cfg = self.engine_config
        if cfg.speculative_method != "draft":
            if draft is not None:
                raise ValueError("a draft model was given, but --speculative-method is not draft")
            return None
        if draft is None:
            raise ValueError("--speculative-method draft: the draft model was not loaded")
        model, config, tokenizer = draft
        check_compatible(self.config, self.tokenizer, config, tokenizer, self.max_model_len)
        ahead = cfg.max_num_seqs * (1 + -(-cfg.speculative_num_tokens // cfg.block_size))
        return DraftModel(model, num_blocks=num_kv_blocks + ahead, block_size=cfg.block_size, kv_dtype=kv_dtype)

    @classmethod
    def from_config(cls, cfg: EngineConfig, metrics: RuntimeMetrics | None = None) -> LLMEngine:
        """Load `cfg.model` onto the device `cfg` resolves to, in `cfg.tier`, and drive it (and the draft model of
        `--speculative-method draft`, in the compute dtype with its float weights, beside it)."""
        from infleet.runtime.loader import load_model

        cfg = cfg.resolve()
        apply_kernels(cfg)
        dtype = getattr(torch, cfg.compute_dtype_name)
        model, config, tokenizer = load_model(cfg.model, dtype=dtype)
        model = model.to(cfg.device)
        if not cfg.enable_lora:  # adapters attach to q/k/v and gate/up by name
            fuse_projections(model)
        model = apply_tier(model, cfg.tier)
        lora = None
        if cfg.enable_lora:  # after the tier: the adapters' deltas are added to the quantized layers' outputs
            from infleet.runtime.lora.manager import LoRAManager

            cache = Path(cfg.model_cache) if cfg.model_cache else None
            lora = LoRAManager(model, max_loras=cfg.max_loras, max_rank=cfg.max_lora_rank, cache=cache)
            for name, source in cfg.lora_modules:
                lora.load(name, source)
        draft = None
        if cfg.speculative_method == "draft" and cfg.speculative_draft_model:
            d_model, d_config, d_tokenizer = load_model(cfg.speculative_draft_model, dtype=dtype)
            draft = (fuse_projections(d_model.to(cfg.device)), d_config, d_tokenizer)
        return cls(model, config, tokenizer, cfg, kv_dtype=dtype, metrics=metrics, draft=draft, lora=lora)

    @property
    def grammars(self) -> Grammars:
        """The grammar engine for structured output, built on first use (it indexes the vocabulary once)."""
        with self._grammars_lock:  # the server's threads compile; the first one builds it
            if self._grammars is None:
                self._grammars = Grammars(self.tokenizer, self.config.vocab_size, sorted(self.eos_token_ids))
        return self._grammars

    # --- requests ---------------------------------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> Sequence:
        if request_id in self.requests:
            raise ValueError(f"request_id: {request_id!r} is already in use")
        params.validate(self.max_model_len, len(prompt_ids))
        vocab = self.config.vocab_size
        if any(not 0 <= t < vocab for t in prompt_ids):
            raise ValueError(f"prompt: token ids must be in [0, {vocab})")
        if any(t >= vocab for t in params.logit_bias):
            raise ValueError(f"logit_bias: token ids must be in [0, {vocab})")
        if params.prompt_logprobs is not None and not getattr(self.runner, "computes_prompt_logprobs", False):
            raise ValueError("prompt_logprobs: not available with tensor or pipeline parallelism")
        seq = Sequence(
            request_id,
            list(prompt_ids),
            len(prompt_ids),
            params,
            detokenizer=self.tokenizer.detokenizer(prompt_ids),
            generator=params.make_generator(self.runner.device),
            matcher=None if params.grammar is None else Matcher(params.grammar),
        )
        if params.adapter is not None:
            if self.lora is None:
                from infleet.runtime.lora.manager import UnknownAdapter

                raise UnknownAdapter(f"model: {params.adapter!r} is not served here (LoRA is off)")
            adapter = self.lora.acquire(params.adapter)  # held until the request ends
            seq.lora_id, seq.hash_root = adapter.serial, adapter.hash_root
        self.requests[request_id] = seq
        self.scheduler.add(seq)
        return seq

    def abort(self, request_id: str) -> RequestOutput | None:
        seq = self.requests.pop(request_id, None)
        if seq is None:
            return None
        for choice in seq.choices:
            self.scheduler.finish(choice)
            choice.finish_reason = choice.finish_reason or "abort"
        seq.finish_reason = "abort"
        self._report_finished(seq, time.monotonic())
        self._release(seq)
        return RequestOutput(request_id, [], "", True, "abort", seq.prompt_len, seq.num_output_tokens)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work()

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    def stats(self) -> EngineStats:
        bm = self.block_manager
        return EngineStats(
            running=len(self.scheduler.running),
            waiting=len(self.scheduler.waiting),
            kv_cache_usage=bm.usage,
            num_kv_blocks=bm.num_blocks,
            prefix_cache_queries=bm.prefix_queries,
            prefix_cache_hits=bm.prefix_hits,
            preemptions=self.scheduler.num_preemptions,
        )

    # --- the step ---------------------------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        if self.speculator is not None:
            self.speculator.propose(self.scheduler.running)
        batch = self.scheduler.schedule()
        if not batch:
            return []
        grammars = self._grammars  # structured output: masks fill on a worker thread while the forward runs
        masks = grammars.start([e.seq for e in batch if e.samples]) if grammars else {}
        samplers, logits = self.runner.run(batch)
        verified: dict[int, list[int]] = {}  # speculating samplers' kept drafts and one more token
        if self.speculator is not None and any(e.seq.draft_ids for e in samplers):
            verified, logits = self.speculator.verify(samplers, logits)  # then one row per sampler, as without
        if grammars and masks:  # before the forks copy the prompt's row: a fork starts where its parent does
            grammars.apply(masks, logits, [e.seq for e in samplers])
        samplers, logits = self._fork(samplers, logits)
        tokens = self._sample(samplers, logits, verified)
        before = [e.seq.num_tokens for e in samplers]
        self.scheduler.postprocess(batch, samplers, tokens)
        outputs = [self._output(e.seq, n) for e, n in zip(samplers, before, strict=True)]
        last = {o.request_id: i for i, o in enumerate(outputs) if o.request_done}
        for i, o in enumerate(outputs):
            o.request_done = last.get(o.request_id) == i  # a request ends once, with its last output
        for request_id in last:
            parent = self.requests.pop(request_id)
            self._report_finished(parent, max(c.last_token_time or 0.0 for c in parent.choices) or time.monotonic())
            self._release(parent)
        self._report_step()
        return outputs

    def _sample(
        self, samplers: list[ScheduledSequence], logits: torch.Tensor, verified: dict[int, list[int]]
    ) -> list[list[int]]:
        """Each sampler's new tokens: the verified ones, else one drawn from its processed row (with its
        log-probabilities when asked for)."""
        plain = [i for i in range(len(samplers)) if i not in verified]
        seqs = [samplers[i].seq for i in plain]
        params = [s.params for s in seqs]
        rows = logits if len(plain) == len(samplers) else logits[plain]
        processed = process(rows, params, [(s.token_ids, s.prompt_len) for s in seqs])
        drawn = draw(processed, params, [s.generator for s in seqs])
        asked = [j for j, p in enumerate(params) if p.logprobs is not None]
        if asked:
            found = token_logprobs(
                processed[asked], [drawn[j] for j in asked], [params[j].logprobs or 0 for j in asked]
            )
            for j, lp in zip(asked, found, strict=True):
                seqs[j].logprobs.append(lp)
        tokens = [verified.get(i, []) for i in range(len(samplers))]
        for i, token in zip(plain, drawn, strict=True):
            tokens[i] = [token]
        return tokens

    def _fork(
        self, samplers: list[ScheduledSequence], logits: torch.Tensor
    ) -> tuple[list[ScheduledSequence], torch.Tensor]:
        """Each request with n > 1 whose prompt was just computed becomes n choices sharing its prompt's full KV
        blocks; each fork samples from a copy of the prompt's logits row. Returns the grown samplers and rows."""
        rows = [i for i, e in enumerate(samplers) if e.seq.params.n > 1 and e.seq.index == 0 and not e.seq.forks]
        if not rows:
            return samplers, logits
        bm = self.block_manager
        extra: list[ScheduledSequence] = []
        extra_rows: list[int] = []
        for i in rows:
            parent = samplers[i].seq
            computed = parent.num_computed_tokens + samplers[i].num_tokens  # the whole prompt, after this step
            shared = parent.block_table[: computed // bm.block_size]
            for index in range(1, parent.params.n):
                seed = parent.params.seed
                generator = None if seed is None else torch.Generator(self.runner.device).manual_seed(seed + index)
                child = parent.fork(index, generator)
                child.block_table = list(shared)
                child.num_computed_tokens = len(shared) * bm.block_size
                bm.share(shared)
                parent.forks.append(child)
                self.scheduler.running.append(child)
                extra.append(ScheduledSequence(child, 0))
                extra_rows.append(i)
        return samplers + extra, torch.cat([logits, logits[extra_rows]])

    def _output(self, seq: Sequence, num_tokens_before: int) -> RequestOutput:
        """The step's delta for `seq`: its new tokens and the text that can no longer become a stop string."""
        finished = seq.finish_reason is not None
        end = len(seq.text) if finished else len(seq.text) - _holdback(seq.text, seq.params.stop)
        new_text = seq.text[seq.emitted : end] if end > seq.emitted else ""
        seq.emitted = max(seq.emitted, end)
        parent = self.requests.get(seq.request_id, seq)
        done = finished and all(c.finish_reason is not None for c in parent.choices)
        first = seq.num_output_tokens == 1
        return RequestOutput(
            seq.request_id, seq.token_ids[num_tokens_before:], new_text, finished, seq.finish_reason, seq.prompt_len,
            seq.num_output_tokens, index=seq.index, request_done=done,
            new_logprobs=seq.logprobs[-1:] if seq.params.logprobs is not None else [],
            prompt_logprobs=seq.prompt_logprobs if first and seq.params.prompt_logprobs is not None else None,
        )  # fmt: skip

    # --- metrics ----------------------------------------------------------------------------------------------------
    def _report_step(self) -> None:
        if self.metrics is None:
            return
        s = self.stats()
        self.metrics.set_queue(s.running, s.waiting, s.kv_cache_usage)
        queries, hits, preemptions = self._reported
        if s.prefix_cache_queries > queries:
            self.metrics.prefix_cache(s.prefix_cache_queries - queries, s.prefix_cache_hits - hits)
        if s.preemptions > preemptions:
            self.metrics.preemptions(s.preemptions - preemptions)
        self._reported = (s.prefix_cache_queries, s.prefix_cache_hits, s.preemptions)
        if self.speculator is not None and self.speculator.stats.drafts > self._reported_spec.drafts:
            now, was = self.speculator.stats, self._reported_spec
            self.metrics.speculative(
                now.drafts - was.drafts,
                now.draft_tokens - was.draft_tokens,
                now.accepted_tokens - was.accepted_tokens,
                now.emitted_tokens - was.emitted_tokens,
                now.acceptance_rate,
                now.mean_accepted_length,
            )
            self._reported_spec = dataclasses.replace(now)

    def _release(self, seq: Sequence) -> None:
        """A request ended: its adapter may be freed now (an unload waits for the requests running with it)."""
        if self.lora is not None and seq.lora_id is not None:
            self.lora.release(seq.lora_id)

    def _report_finished(self, seq: Sequence, now: float) -> None:
        if self.metrics is None:
            return
        self.metrics.request_finished(
            prompt_tokens=seq.prompt_len,
            generation_tokens=sum(c.num_output_tokens for c in seq.choices),
            queue_time=None if seq.first_scheduled_time is None else seq.first_scheduled_time - seq.arrival_time,
            ttft=None if seq.first_token_time is None else seq.first_token_time - seq.arrival_time,
            itls=seq.itls,
            e2e=now - seq.arrival_time,
            finish_reason=seq.finish_reason or "abort",
            adapter=seq.params.adapter,
        )

    # --- offline use (tests, benchmarks) ---------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]) -> list[list[int]]:
        """Run prompts to completion together; returns each one's generated token ids (its first choice's)."""
        plist = params if isinstance(params, list) else [params] * len(prompts)
        ids = [f"offline-{time.monotonic_ns()}-{i}" for i in range(len(prompts))]
        out: dict[str, list[int]] = {rid: [] for rid in ids}
        for rid, prompt, p in zip(ids, prompts, plist, strict=True):
            self.add_request(rid, prompt, p)
        while self.has_unfinished():
            for o in self.step():
                if o.index == 0:
                    out[o.request_id].extend(o.new_token_ids)
        return [out[rid] for rid in ids]


class AsyncEngine:
    """Runs an `LLMEngine`'s step loop in a background thread; asyncio-facing."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self.lora = engine.lora  # the adapter table the server loads into and lists (None: LoRA off)
        cfg = engine.engine_config
        graphs = getattr(engine.runner, "graphs", None) is not None
        self.execution = execution_info(engine.model, cfg.tier, cuda_graphs=graphs)
        self.tokenizer = engine.tokenizer
        self.model_name = engine.config.name
        self.tier = cfg.tier
        self.tier_info: TierInfo | None = getattr(engine.model, "tier_info", None)  # how a quantized tier was built
        self.max_model_len = engine.max_model_len
        self.num_kv_blocks = engine.block_manager.num_blocks
        self.kv_budget = engine.kv_budget  # how the KV cache was sized (for the startup log)
        self.max_waiting = cfg.max_waiting
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._inbox: list[tuple[str, list[int], SamplingParams]] = []
        self._aborts: list[str] = []
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue[RequestOutput | BaseException]]] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._accepting = True
        self._engine_waiting = 0
        self._last_stats = engine.stats()

    @classmethod
    def from_config(cls, cfg: EngineConfig, metrics: RuntimeMetrics | None = None) -> AsyncEngine:
        return cls(LLMEngine.from_config(cfg, metrics))

    # --- lifecycle --------------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="infleet-engine", daemon=True)
            self._thread.start()

    async def shutdown(self, timeout: float | None = None) -> None:
        """Stop admitting, let in-flight requests finish (up to `timeout` seconds), abort the rest, stop the thread."""
        self._accepting = False
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.num_unfinished() and (deadline is None or time.monotonic() < deadline):
            await asyncio.sleep(0.02)
        with self._lock:
            self._aborts.extend(self._streams)
            self._stopping = True
        self._wake.set()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
            self._thread = None

    def num_unfinished(self) -> int:
        with self._lock:
            return len(self._streams)

    def stats(self) -> EngineStats:
        return self._last_stats

    @property
    def grammars(self) -> Grammars:
        return self.engine.grammars

    # --- requests ---------------------------------------------------------------------------------------------------
    async def generate(
        self, prompt_ids: list[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[RequestOutput]:
        """Stream one request's outputs. Raises (on first iteration) QueueFull, EngineClosed, or ValueError for bad
        parameters. Closing or cancelling the iterator aborts the request and frees its blocks."""
        if not self._accepting:
            raise EngineClosed("the engine is shutting down")
        params.validate(self.max_model_len, len(prompt_ids))
        queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        with self._lock:
            if request_id in self._streams:
                raise ValueError(f"request_id: {request_id!r} is already in use")
            if len(self._inbox) + self._engine_waiting >= self.max_waiting:
                raise QueueFull(f"{self.max_waiting} requests are already waiting")
            self._streams[request_id] = (asyncio.get_running_loop(), queue)
            self._inbox.append((request_id, list(prompt_ids), params))
        self.start()
        self._wake.set()
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.request_done
                yield item
                if finished:
                    return
        finally:
            if not finished:
                with self._lock:
                    self._aborts.append(request_id)
                self._wake.set()

    # --- the engine thread ------------------------------------------------------------------------------------------
    def _deliver(self, request_id: str, item: RequestOutput | BaseException, last: bool) -> None:
        with self._lock:
            target = self._streams.pop(request_id, None) if last else self._streams.get(request_id)
        if target is not None:
            loop, queue = target
            with contextlib.suppress(RuntimeError):  # the caller's loop is gone: nobody to tell
                loop.call_soon_threadsafe(queue.put_nowait, item)

    def _loop(self) -> None:
        engine = self.engine
        while True:
            with self._lock:
                inbox = list(self._inbox)  # left in place until added, so the waiting count never dips
                aborts, self._aborts = self._aborts, []
                stopping = self._stopping
            for request_id, prompt, params in inbox:
                try:
                    engine.add_request(request_id, prompt, params)
                except ValueError as exc:
                    self._deliver(request_id, exc, last=True)
            for request_id in aborts:
                engine.abort(request_id)
                with self._lock:
                    self._streams.pop(request_id, None)
            with self._lock:
                del self._inbox[: len(inbox)]
                self._engine_waiting = engine.num_waiting
            if stopping:
                self._last_stats = engine.stats()
                return
            if not engine.has_unfinished():
                self._last_stats = engine.stats()
                self._wake.wait()
                self._wake.clear()
                continue
            try:
                outputs = engine.step()
            except Exception as exc:  # fail every request loudly rather than leave clients hanging
                log.exception("engine step failed")
                for request_id in list(engine.requests):
                    engine.abort(request_id)
                    self._deliver(request_id, RuntimeError(f"engine step failed: {exc}"), last=True)
                outputs = []
            self._last_stats = engine.stats()
            with self._lock:
                self._engine_waiting = engine.num_waiting
            for out in outputs:
                self._deliver(out.request_id, out, last=out.request_done)
