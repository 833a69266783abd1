"""Sampling parameters and the sampler: penalties, logit bias, greedy, temperature, top-k, top-p, per-request seeds.

A row's logits are first *processed* (`process`): the repetition penalty (prompt and output tokens, as in HF and
vLLM), then OpenAI's presence and frequency penalties (output tokens), then `logit_bias`, then the temperature
(sampled rows only). Greedy takes the argmax of the processed logits; sampling masks them to top-k/top-p and draws.
Log-probabilities (`logprobs`) are the log-softmax of the processed logits, before the top-k/top-p truncation:
vLLM's "processed_logprobs" mode, so what is reported is the distribution the request asked to sample from.

Each seeded request owns a `torch.Generator` on the model's device, so its tokens do not depend on what else is in
the batch. Sampling runs where the logits are; the chosen ids come back to the host in one copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

MAX_N = 128  # OpenAI's bound on choices per request
MAX_LOGPROBS = 20  # top log-probabilities per token, OpenAI's bound for chat (completions: 5, checked by the API)


@dataclass
class TokenLogprob:
    """A token's log-probability under the processed distribution, with the `top` most likely (id, logprob)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class SamplingParams:
    """What one request asks of the sampler; `validate` gives the ranges."""

    max_tokens: int = 16
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 (or -1) = off
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    n: int = 1  # choices that share the prompt (the engine forks the sequence after prefill)
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from each token already in the output
    frequency_penalty: float = 0.0  # OpenAI's: subtracted once per occurrence in the output
    repetition_penalty: float = 1.0  # HF/vLLM's: divides positive (multiplies negative) logits of prompt+output tokens
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit
    logprobs: int | None = None  # None: off; k: the sampled token's log-probability and the k most likely
    prompt_logprobs: int | None = None  # the same for every prompt token after the first (needs the prefill logits)
    grammar: Any = None  # structured output: an xgrammar CompiledGrammar the output must follow (structured.py)
    adapter: str | None = None  # the LoRA adapter (its served name) whose weights compute this request; None: base

    def validate(self, max_model_len: int, prompt_len: int) -> None:
        """Raises ValueError("<field>: <what is wrong>") for the first problem found."""
        if prompt_len < 1:
            raise ValueError("prompt: must contain at least one token")
        if prompt_len >= max_model_len:
            raise ValueError(
                f"prompt: {prompt_len} tokens leave no room to generate within the context length {max_model_len}"
            )
        if not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool) or self.max_tokens < 1:
            raise ValueError(f"max_tokens: must be an integer >= 1, got {self.max_tokens!r}")
        if prompt_len + self.max_tokens > max_model_len:
            raise ValueError(
                f"max_tokens: prompt ({prompt_len} tokens) + max_tokens ({self.max_tokens}) exceeds the context "
                f"length {max_model_len}"
            )
        if not 0.0 <= self.temperature <= 100.0 or self.temperature != self.temperature:
            raise ValueError(f"temperature: must be between 0 and 100, got {self.temperature!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or self.top_k < -1:
            raise ValueError(f"top_k: must be an integer >= 0 (0 or -1 disables it), got {self.top_k!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or not 0 <= self.seed < 2**63):
            raise ValueError(f"seed: must be an integer in [0, 2**63), got {self.seed!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("stop: every stop sequence must be a non-empty string")
        if any(not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            raise ValueError("stop_token_ids: must be non-negative integers")
        if not isinstance(self.n, int) or not 1 <= self.n <= MAX_N:
            raise ValueError(f"n: must be an integer between 1 and {MAX_N}, got {self.n!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not -2.0 <= value <= 2.0:
                raise ValueError(f"{name}: must be between -2 and 2, got {value!r}")
        if not 0.0 < self.repetition_penalty <= 2.0:
            raise ValueError(f"repetition_penalty: must be in (0, 2], got {self.repetition_penalty!r}")
        for token, bias in self.logit_bias.items():
            if not isinstance(token, int) or token < 0:
                raise ValueError(f"logit_bias: keys must be token ids >= 0, got {token!r}")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"logit_bias: values must be between -100 and 100, got {bias!r} for token {token}")
        for name in ("logprobs", "prompt_logprobs"):
            k = getattr(self, name)
            if k is not None and (not isinstance(k, int) or not 0 <= k <= MAX_LOGPROBS):
                raise ValueError(f"{name}: must be an integer between 0 and {MAX_LOGPROBS}, got {k!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def penalized(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0 or self.repetition_penalty != 1.0

    def make_generator(self, device: torch.device | str = "cpu") -> torch.Generator | None:
        return None if self.seed is None else torch.Generator(device=device).manual_seed(self.seed)


def apply_top_k_top_p(logits: Tensor, top_k: Tensor, top_p: Tensor) -> Tensor:
    """Mask (to -inf) what falls outside each row's top-k and nucleus; `top_k` 0 or `top_p` 1 leave a row alone."""
    vocab = logits.shape[-1]
    sorted_logits, sorted_idx = logits.sort(dim=-1, descending=True)
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab))
    rank = torch.arange(vocab, device=logits.device).expand_as(sorted_logits)
    drop = rank >= k[:, None]
    probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass strictly above each token: keep while it is below top_p
    drop |= before >= top_p[:, None]
    drop[:, 0] = False  # the most likely token always survives
    return logits.scatter(-1, sorted_idx, sorted_logits.masked_fill(drop, float("-inf")))


def penalize(logits: Tensor, params: SamplingParams, token_ids: Sequence[int], prompt_len: int) -> Tensor:
    """One row (`[vocab]`) with its penalties and bias applied; the formulas are vLLM's and OpenAI's."""
    vocab = logits.shape[-1]
    device = logits.device
    if params.repetition_penalty != 1.0:
        seen = torch.zeros(vocab, dtype=torch.bool, device=device)
        seen[torch.tensor(list(token_ids), dtype=torch.long, device=device)] = True
        r = params.repetition_penalty
        logits = torch.where(seen, torch.where(logits > 0, logits / r, logits * r), logits)
    if params.presence_penalty or params.frequency_penalty:
        output = torch.tensor(list(token_ids[prompt_len:]), dtype=torch.long, device=device)
        counts = torch.bincount(output, minlength=vocab)[:vocab].to(logits.dtype)
        logits = logits - counts * params.frequency_penalty - (counts > 0).to(logits.dtype) * params.presence_penalty
    if params.logit_bias:
        ids = torch.tensor([t for t in params.logit_bias if t < vocab], dtype=torch.long, device=device)
        bias = torch.tensor([b for t, b in params.logit_bias.items() if t < vocab], dtype=logits.dtype, device=device)
        logits = logits.index_add(0, ids, bias)
    return logits


def process(
    logits: Tensor, params: list[SamplingParams], histories: Sequence[tuple[Sequence[int], int]] | None = None
) -> Tensor:
    """The processed logits (`[rows, vocab]`, float32): penalties and bias per row, then each sampled row's
    temperature. `histories` gives each row's (prompt + output token ids, prompt length); penalties need it."""
    out = logits
    rows = [i for i, p in enumerate(params) if p.penalized or p.logit_bias]
    if rows:
        if histories is None:
            raise ValueError("penalties need each row's token history")
        out = out.clone()
        for i in rows:
            out[i] = penalize(out[i], params[i], histories[i][0], histories[i][1])
    if any(not p.greedy and p.temperature != 1.0 for p in params):
        temps = torch.tensor([1.0 if p.greedy else p.temperature for p in params], device=out.device)
        out = out / temps[:, None].to(out.dtype)
    return out


def draw(processed: Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]) -> list[int]:
    """One token per row of the processed logits: argmax for greedy rows, else a top-k/top-p masked draw."""
    out = processed.argmax(dim=-1)
    rows = [i for i, p in enumerate(params) if not p.greedy]
    if rows:
        device = processed.device
        sub = processed[rows]
        needs_filter = any(params[i].top_k > 0 or params[i].top_p < 1.0 for i in rows)
        if needs_filter:
            top_k = torch.tensor([max(params[i].top_k, 0) for i in rows], device=device)
            top_p = torch.tensor([params[i].top_p for i in rows], dtype=sub.dtype, device=device)
            sub = apply_top_k_top_p(sub, top_k, top_p)
        probs = sub.softmax(dim=-1)
        for j, i in enumerate(rows):
            out[i] = torch.multinomial(probs[j], 1, generator=generators[i])[0]
    return [int(t) for t in out.tolist()]


def sample(
    logits: Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
    histories: Sequence[tuple[Sequence[int], int]] | None = None,
) -> list[int]:
    """One token per row of `logits` (`[rows, vocab]`, float32)."""
    return draw(process(logits, params, histories), params, generators)


def token_logprobs(logits: Tensor, token_ids: Sequence[int], tops: Sequence[int]) -> list[TokenLogprob]:
    """Each row's log-softmax at `token_ids[row]`, with its `tops[row]` most likely tokens, in one host copy."""
    logprobs = logits.float().log_softmax(dim=-1)
    ids = torch.tensor(list(token_ids), dtype=torch.long, device=logits.device)
    chosen = logprobs.gather(1, ids[:, None])[:, 0].tolist()
    k = max(tops, default=0)
    top_values, top_ids = logprobs.topk(k, dim=-1) if k else (logprobs[:, :0], ids[:, None][:, :0])
    values, indices = top_values.tolist(), top_ids.tolist()
    return [
        TokenLogprob(t, lp, list(zip(indices[r][: tops[r]], values[r][: tops[r]], strict=True)))
        for r, (t, lp) in enumerate(zip(token_ids, chosen, strict=True))
    ]
