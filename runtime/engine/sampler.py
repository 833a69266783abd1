"""Sampling parameters and the sampler: greedy, temperature, top-k, top-p, per-request seeds.

Each seeded request owns a `torch.Generator` on the model's device, so its tokens do not depend on what else is in
the batch. Sampling runs where the logits are; the chosen ids come back to the host in one copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 (or -1) = off
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    grammar: Any = None  # structured output: an xgrammar CompiledGrammar the output must follow (structured.py)

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

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

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


def sample(logits: Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]) -> list[int]:
    """One token per row of `logits` (`[rows, vocab]`, float32)."""
    out = logits.argmax(dim=-1)
    rows = [i for i, p in enumerate(params) if not p.greedy]
    if rows:
        device = logits.device
        sub = logits[rows] / torch.tensor([params[i].temperature for i in rows], device=device)[:, None]
        needs_filter = any(params[i].top_k > 0 or params[i].top_p < 1.0 for i in rows)
        if needs_filter:
            top_k = torch.tensor([max(params[i].top_k, 0) for i in rows], device=device)
            top_p = torch.tensor([params[i].top_p for i in rows], dtype=sub.dtype, device=device)
            sub = apply_top_k_top_p(sub, top_k, top_p)
        probs = sub.softmax(dim=-1)
        for j, i in enumerate(rows):
            out[i] = torch.multinomial(probs[j], 1, generator=generators[i])[0]
    return [int(t) for t in out.tolist()]
