"""One request as the engine tracks it: its tokens, its KV blocks, how much of it is computed, its text so far."""

from __future__ import annotations

import copy
import enum
import time
from dataclasses import dataclass, field

import torch

from infleet.runtime.engine.sampler import SamplingParams, TokenLogprob
from infleet.runtime.engine.structured import Matcher
from infleet.runtime.tokenizer import IncrementalDetokenizer


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request_id: str
    token_ids: list[int]  # prompt followed by the generated tokens
    prompt_len: int
    params: SamplingParams
    detokenizer: IncrementalDetokenizer | None = None
    generator: torch.Generator | None = None
    status: SequenceStatus = SequenceStatus.WAITING
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)  # hash chain of this sequence's full, computed blocks
    num_computed_tokens: int = 0  # tokens whose K/V are in the cache
    draft_ids: list[int] = field(default_factory=list)  # this step's speculative draft (not yet in token_ids)
    draft_probs: torch.Tensor | None = None  # a draft model's distributions the sampled drafts came from
    drafted_tokens: int = 0  # speculative tokens drafted in the current window, and how many were kept
    accepted_tokens: int = 0
    draft_pause: int = 0  # decode steps left without drafts
    finish_reason: str | None = None
    # text: `text` is everything decoded so far; `emitted` how much of it was handed out
    text: str = ""
    emitted: int = 0
    # timing, for metrics
    arrival_time: float = field(default_factory=time.monotonic)
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    itls: list[float] = field(default_factory=list)
    num_preemptions: int = 0
    # choices (n > 1): this sequence's index among its request's choices, and the others, forked off choice 0
    index: int = 0
    forks: list[Sequence] = field(default_factory=list)
    # log-probabilities, when asked for: one per generated token, and one per prompt token after the first
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)
    matcher: Matcher | None = None  # structured output: where the text is in the request's grammar
    lora_id: int | None = None  # the serial of the loaded LoRA adapter computing it (runtime/lora/manager.py)
    hash_root: int | None = None  # where its prefix-cache hash chain starts (an adapter's own root, else ROOT)

    def append_token(self, token: int, now: float) -> None:
        """A sampled token, with its timing (time to first token, then the gaps between tokens)."""
        self.token_ids.append(token)
        if self.matcher is not None:
            self.matcher.accept(token)
        if self.first_token_time is None:
            self.first_token_time = now
        elif self.last_token_time is not None:
            self.itls.append(now - self.last_token_time)
        self.last_token_time = now

    def fork(self, index: int, generator: torch.Generator | None) -> Sequence:
        """Choice `index` of this request, sharing everything computed so far (the caller shares the KV blocks)."""
        detokenizer = copy.copy(self.detokenizer)
        if detokenizer is not None:
            detokenizer.ids = list(detokenizer.ids)  # its own window of ids, from here on
        return Sequence(
            self.request_id, list(self.token_ids), self.prompt_len, self.params,
            detokenizer=detokenizer, generator=generator, status=self.status,
            num_computed_tokens=self.num_computed_tokens, text=self.text, emitted=self.emitted,
            arrival_time=self.arrival_time, first_scheduled_time=self.first_scheduled_time,
            index=index, prompt_logprobs=self.prompt_logprobs, lora_id=self.lora_id, hash_root=self.hash_root,
            matcher=None if self.params.grammar is None else Matcher(self.params.grammar),  # before any output
        )  # fmt: skip

    @property
    def choices(self) -> list[Sequence]:
        return [self, *self.forks]

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.prompt_len :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.prompt_len

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
