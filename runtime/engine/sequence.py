"""One request as the engine tracks it: its tokens, its KV blocks, how much of it is computed, its text so far."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import torch

from infleet.runtime.engine.sampler import SamplingParams
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

    def append_token(self, token: int, now: float) -> None:
        """A sampled token, with its timing (time to first token, then the gaps between tokens)."""
        self.token_ids.append(token)
        if self.first_token_time is None:
            self.first_token_time = now
        elif self.last_token_time is not None:
            self.itls.append(now - self.last_token_time)
        self.last_token_time = now

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
