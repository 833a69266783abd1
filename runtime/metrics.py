"""The runtime's Prometheus metrics, named like vLLM's (`vllm:x` is `infleet_x`) so dashboards translate one to one.

The engine owns the numbers and reports them through `RuntimeMetrics`; the server only exposes the registry at
`/metrics`. Each instance has its own registry so that several engines (or tests) in one process do not collide.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics import MetricWrapperBase

from infleet.api import metrics as names
from infleet.api.metrics import (
    FEATURES,
    INFLEET,
    REQUEST_BUCKETS,
    REQUEST_FEATURES,
    STRUCTURED_OUTPUT_KINDS,
    STRUCTURED_OUTPUT_REQUESTS,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST


def counter(name: str) -> str:
    """prometheus_client appends `_total` to a Counter's name itself."""
    return name.removesuffix("_total")


EXECUTION_LABELS = ("device", "compute_dtype", "kernel_backend", "gemm")


class RuntimeMetrics:
    """All `infleet_*` series of one served model, labelled with `model_name` and `tier`."""

    def __init__(self, model_name: str, tier: str, registry: CollectorRegistry | None = None) -> None:
        self.model_name = model_name
        self.tier = tier
        self.registry = registry if registry is not None else CollectorRegistry()
        labels = ("model_name", "tier")
        r = self.registry

        self._running = Gauge(INFLEET.running, "Requests in the running batch.", labels, registry=r)
        self._waiting = Gauge(INFLEET.waiting, "Requests waiting to be scheduled.", labels, registry=r)
        self._kv_usage = Gauge(
            INFLEET.kv_cache_usage, "Fraction of KV-cache blocks in use (1 = full).", labels, registry=r
        )
        self._ttft = Histogram(
            INFLEET.ttft.name,
            "Time from arrival to the first generated token.",
            labels,
            buckets=INFLEET.ttft.buckets,
            registry=r,
        )
        self._itl = Histogram(
            INFLEET.tpot.name,
            "Time between consecutive generated tokens of a request.",
            labels,
            buckets=INFLEET.tpot.buckets,
            registry=r,
        )
        self._e2e = Histogram(
            INFLEET.e2e.name,
            "Time from arrival to the last token.",
            labels,
            buckets=INFLEET.e2e.buckets,
            registry=r,
        )
        self._queue = Histogram(
            "infleet_request_queue_time_seconds",
            "Time a request spent waiting before it was first scheduled.",
            labels,
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self._prompt_tokens = Counter(
            counter(INFLEET.prompt_tokens), "Prompt tokens of finished requests.", labels, registry=r
        )
        self._generation_tokens = Counter(
            counter(INFLEET.generation_tokens), "Generated tokens of finished requests.", labels, registry=r
        )
        self._prefix_queries = Counter(
            counter(INFLEET.prefix_queries), "Prompt tokens looked up in the prefix cache.", labels, registry=r
        )
        self._prefix_hits = Counter(
            counter(INFLEET.prefix_hits), "Prompt tokens found in the prefix cache.", labels, registry=r
        )
        self._preemptions = Counter(
            "infleet_num_preemptions",
            "Requests preempted (to be recomputed) for lack of KV blocks.",
            labels,
            registry=r,
        )
        self._success = Counter(
            "infleet_request_success",
            "Finished requests by finish reason.",
            (*labels, "finish_reason"),
            registry=r,
        )
        self._features = Counter(
            counter(REQUEST_FEATURES),
            "Requests accepted, by each optional API feature they use (n > 1, logprobs, penalties, ...).",
            (*labels, "feature"),
            registry=r,
        )
        self._structured = Counter(
            counter(STRUCTURED_OUTPUT_REQUESTS),
            "Requests with structured output (response_format or tools), by kind.",
            (*labels, "kind"),
            registry=r,
        )
        self._spec_drafts = Counter(
            counter(names.SPEC_DRAFTS), "Speculative drafts proposed (one per request and step).", labels, registry=r
        )
        self._spec_draft_tokens = Counter(
            counter(names.SPEC_DRAFT_TOKENS), "Tokens drafted by speculative decoding.", labels, registry=r
        )
        self._spec_accepted = Counter(
            counter(names.SPEC_ACCEPTED_TOKENS), "Drafted tokens the model's verification kept.", labels, registry=r
        )
        self._spec_emitted = Counter(
            counter(names.SPEC_EMITTED_TOKENS),
            "Tokens emitted by speculating decodes (kept drafts plus one per draft).",
            labels,
            registry=r,
        )
        self._spec_rate = Gauge(
            names.SPEC_ACCEPTANCE_RATE, "Accepted over drafted tokens since the start.", labels, registry=r
        )
        self._spec_length = Gauge(
            names.SPEC_MEAN_ACCEPTED_LENGTH, "Tokens emitted per draft since the start.", labels, registry=r
        )
        per_adapter = (*labels, names.ADAPTER_LABEL)
        self._lora_requests = Counter(
            counter(names.LORA_REQUESTS), "Finished requests served through a LoRA adapter.", per_adapter, registry=r
        )
        self._lora_prompt_tokens = Counter(
            counter(names.LORA_PROMPT_TOKENS), "Prompt tokens of finished adapter requests.", per_adapter, registry=r
        )
        self._lora_generation_tokens = Counter(
            counter(names.LORA_GENERATION_TOKENS),
            "Generated tokens of finished adapter requests.",
            per_adapter,
            registry=r,
        )
        self._lora_e2e = Histogram(
            names.LORA_E2E.name,
            "Time from arrival to the last token, per adapter.",
            per_adapter,
            buckets=names.LORA_E2E.buckets,
            registry=r,
        )
        self._lora_ttft = Histogram(
            names.LORA_TTFT.name,
            "Time from arrival to the first generated token, per adapter.",
            per_adapter,
            buckets=names.LORA_TTFT.buckets,
            registry=r,
        )
        self._per_adapter: tuple[MetricWrapperBase, ...] = (
            self._lora_requests, self._lora_prompt_tokens, self._lora_generation_tokens, self._lora_e2e,
            self._lora_ttft,
        )  # fmt: skip
        # vLLM's `*_info` convention: a constant 1 whose labels say how the model computes (set once loaded)
        self._info = Gauge(
            "infleet_runtime_info",
            "Device, compute dtype and kernels the runtime actually uses.",
            (*labels, *EXECUTION_LABELS),
            registry=r,
        )
        self._execution: dict[str, str] = {}
        self._all: tuple[MetricWrapperBase, ...] = (
            self._running, self._waiting, self._kv_usage, self._ttft, self._itl, self._e2e, self._queue,
            self._prompt_tokens, self._generation_tokens, self._prefix_queries, self._prefix_hits, self._preemptions,
            self._spec_drafts, self._spec_draft_tokens, self._spec_accepted, self._spec_emitted, self._spec_rate,
            self._spec_length,
        )  # fmt: skip
        self._export_zeros()

    def _export_zeros(self) -> None:
        """Create every series up front, so dashboards and rate() see zeros from the first scrape."""
        for metric in self._all:
            metric.labels(*self._labels)
        for reason in ("stop", "length", "abort"):
            self._success.labels(*self._labels, reason)
        for feature in FEATURES:
            self._features.labels(*self._labels, feature)
        for kind in STRUCTURED_OUTPUT_KINDS:
            self._structured.labels(*self._labels, kind)
        if self._execution:
            self._info.labels(*self._labels, *(self._execution[k] for k in EXECUTION_LABELS)).set(1)

    def set_execution(self, execution: dict[str, object]) -> None:
        """Publish `infleet_runtime_info` from the engine's execution report (device, compute dtype, kernels)."""
        self._info.clear()
        self._execution = {k: str(execution[k]) for k in EXECUTION_LABELS}
        self._export_zeros()

    def rename(self, model_name: str) -> None:
        """Relabel with the name clients use, once the model is loaded (before any traffic)."""
        for metric in (*self._all, self._success, self._structured, self._info, self._features, *self._per_adapter):
            metric.clear()
        self.model_name = model_name
        self._export_zeros()

    @property
    def _labels(self) -> tuple[str, str]:
        return self.model_name, self.tier

    def set_queue(self, running: int, waiting: int, kv_usage: float) -> None:
        """The scheduler's state after a step."""
        self._running.labels(*self._labels).set(running)
        self._waiting.labels(*self._labels).set(waiting)
        self._kv_usage.labels(*self._labels).set(kv_usage)

    def request_finished(
        self,
        *,
        prompt_tokens: int,
        generation_tokens: int,
        queue_time: float | None,
        ttft: float | None,
        itls: Iterable[float],
        e2e: float,
        finish_reason: str,
        adapter: str | None = None,
    ) -> None:
        """One request left the engine; `ttft`/`queue_time` are None if it never reached that point (aborted);
        `adapter`: the LoRA adapter it ran through, counted in the per-adapter series too."""
        labels = self._labels
        self._prompt_tokens.labels(*labels).inc(prompt_tokens)
        self._generation_tokens.labels(*labels).inc(generation_tokens)
        if queue_time is not None:
            self._queue.labels(*labels).observe(queue_time)
        if ttft is not None:
            self._ttft.labels(*labels).observe(ttft)
        itl = self._itl.labels(*labels)
        for gap in itls:
            itl.observe(gap)
        self._e2e.labels(*labels).observe(e2e)
        self._success.labels(*labels, finish_reason).inc()
        if adapter is not None:
            self._lora_requests.labels(*labels, adapter).inc()
            self._lora_prompt_tokens.labels(*labels, adapter).inc(prompt_tokens)
            self._lora_generation_tokens.labels(*labels, adapter).inc(generation_tokens)
            self._lora_e2e.labels(*labels, adapter).observe(e2e)
            if ttft is not None:
                self._lora_ttft.labels(*labels, adapter).observe(ttft)

    def adapter_loaded(self, adapter: str) -> None:
        """Export the adapter's series at zero from its load on, so rate() sees its first request."""
        for metric in self._per_adapter:
            metric.labels(*self._labels, adapter)

    def request_features(self, features: Iterable[str]) -> None:
        """An accepted request that uses these optional features (names from `infleet.api.metrics.FEATURES`)."""
        for feature in features:
            self._features.labels(*self._labels, feature).inc()

    def prefix_cache(self, queries: int, hits: int) -> None:
        """Prompt tokens looked up in / served from the prefix cache since the last call."""
        self._prefix_queries.labels(*self._labels).inc(queries)
        self._prefix_hits.labels(*self._labels).inc(hits)

    def structured_output(self, kind: str) -> None:
        """A request whose output a grammar shapes (`kind`: one of STRUCTURED_OUTPUT_KINDS)."""
        self._structured.labels(*self._labels, kind).inc()

    def preemptions(self, n: int) -> None:
        self._preemptions.labels(*self._labels).inc(n)

    def speculative(
        self, drafts: int, draft_tokens: int, accepted: int, emitted: int, acceptance_rate: float, mean_length: float
    ) -> None:
        """Speculative decoding since the last call (counts), and its ratios since the start."""
        labels = self._labels
        self._spec_drafts.labels(*labels).inc(drafts)
        self._spec_draft_tokens.labels(*labels).inc(draft_tokens)
        self._spec_accepted.labels(*labels).inc(accepted)
        self._spec_emitted.labels(*labels).inc(emitted)
        self._spec_rate.labels(*labels).set(acceptance_rate)
        self._spec_length.labels(*labels).set(mean_length)

    def render(self) -> bytes:
        """The text exposition format, for `/metrics`."""
        return generate_latest(self.registry)
