"""Engine defaults that the command line shows before any heavy import (this module needs no torch)."""

from __future__ import annotations

# Prompt tokens per step at most, so that a long prompt lengthens the step running decodes wait on by a bounded
# amount (vLLM's chunked-prefill trade: a few more steps to a long prompt's first token, steady inter-token latency).
# On this project's CPU reference (SmolLM2-135M, one thread) a step costs about 3 ms per prompt token over a
# 100 ms step of 8 decodes; on a GPU 256 tokens are a small fraction of a step.
DEFAULT_MAX_PREFILL_TOKENS = 256
# Speculative decoding is off in a step with more running decodes than this: each draft adds k query rows to the
# step, which a large batch pays for in compute while reading the weights once anyway (benchmarks/speculative.py
# measures the trade at 1 and 16 concurrent requests; docs/benchmarks.md quotes it).
DEFAULT_SPECULATIVE_MAX_BATCH_SIZE = 4
