"""Continuous batching: which sequences run this step, and how many of their tokens.

Each step has a token budget (`max_batch_tokens`). Running sequences go first, in arrival order: a decoding
sequence needs one token, a sequence still in its prompt takes as much as the budget leaves (chunked prefill,
so a long prompt never stalls the decodes around it). Waiting sequences are admitted while budget, sequence slots
and KV blocks last; their cached prefix is matched at admission. When blocks run out mid-step, the most recently
admitted running sequence is preempted: its blocks are freed and it waits at the front of the queue to be
recomputed (its earlier blocks often survive in the prefix cache, so recompute is cheap).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from infleet.runtime.engine.kv_cache import BlockManager
from infleet.runtime.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledSequence:
    seq: Sequence
    num_tokens: int  # new tokens computed for it this step

    @property
    def samples(self) -> bool:
        """True when this step reaches the end of the sequence's tokens, so its last logits yield a new token."""
        return self.seq.num_computed_tokens + self.num_tokens == self.seq.num_tokens


class Scheduler:
    def __init__(self, block_manager: BlockManager, *, max_batch_tokens: int, max_num_seqs: int) -> None:
        if max_batch_tokens < 1 or max_num_seqs < 1:
            raise ValueError("max_batch_tokens and max_num_seqs must be positive")
        self.block_manager = block_manager
        self.max_batch_tokens = max_batch_tokens
        self.max_num_seqs = max_num_seqs
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> list[ScheduledSequence]:
        budget = self.max_batch_tokens
        scheduled: list[ScheduledSequence] = []
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_uncomputed_tokens, budget)
            while not self.block_manager.allocate(seq, n):
                victim = self.running.pop()
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            else:
                scheduled.append(ScheduledSequence(seq, n))
                budget -= n
                i += 1
                continue
            break
        # New sequences only when nothing had to be preempted: otherwise they would take the blocks just freed.
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs and not preempted:
            seq = self.waiting[0]
            if not seq.block_table:
                self.block_manager.match_prefix(seq)
            n = min(seq.num_uncomputed_tokens, budget)
            if not self.block_manager.allocate(seq, n):
                if not self.running:  # alone and still too big: it can never run
                    raise RuntimeError(
                        f"request {seq.request_id} needs more KV blocks than the cache holds "
                        f"({self.block_manager.num_blocks} of {self.block_manager.block_size} tokens)"
                    )
                self.block_manager.free_sequence(seq)  # give back prefix hits; retry next step
                break
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            scheduled.append(ScheduledSequence(seq, n))
            budget -= n
        return scheduled

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.free_sequence(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def finish(self, seq: Sequence) -> None:
        """Remove a finished or aborted sequence wherever it is and release its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.block_manager.free_sequence(seq)
        seq.status = SequenceStatus.FINISHED
