"""Continuous batching: which sequences run this step, and how many of their tokens.

Each step has a token budget (`max_batch_tokens`), filled in three passes, as vLLM does:

1. Running decodes (one token each), in arrival order. They always come first, so the time between a stream's
   tokens is one step whatever else is going on.
2. Prefill chunks of running sequences still in their prompt (chunked prefill), then
3. waiting sequences, admitted while sequence slots and KV blocks last (their cached prefix is matched first).

Passes 2 and 3 share what the decodes left, capped at `max_prefill_tokens` per step while any decode runs: a
step's cost on a CPU grows with its tokens, so the cap bounds how much a long prompt can lengthen the step the
decodes wait on (inter-token latency), at the price of more steps to its first token. With no decode running there
is nothing to protect, and prompts take the whole budget. When blocks run out for a decode, the most recently
admitted running sequence is preempted: its blocks are freed and it waits at the front of the queue to be
recomputed (its earlier blocks often survive in the prefix cache, so recompute is cheap). A prefill chunk never
preempts a sequence already scheduled in the step.

After the forward pass, `postprocess` counts the computed tokens, appends each sampled token and decides whether
its sequence is done: a stop or EOS token, a stop string (the text is cut before it), `max_tokens`, or the
context length. A finished sequence leaves the batch and gives its blocks back at once.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass

from infleet.runtime.engine.kv_cache import BlockManager
from infleet.runtime.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledSequence:
    seq: Sequence
    num_tokens: int  # new tokens computed for it this step

    @property
    def samples(self) -> bool:
        """True when this step reaches the end of the sequence's tokens, so its last logits yield a new token (with
        a speculative draft, the query also holds the drafted tokens, and each of their rows is verified)."""
        return self.seq.num_computed_tokens + self.num_tokens - len(self.seq.draft_ids) == self.seq.num_tokens


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        *,
        max_batch_tokens: int,
        max_num_seqs: int,
        max_prefill_tokens: int | None = None,
        eos_token_ids: Collection[int] = (),
        max_model_len: int | None = None,
        max_adapters: int | None = None,
    ) -> None:
        """`max_prefill_tokens`: prompt tokens per step at most (None: whatever the decodes leave of the budget);
        `eos_token_ids` and `max_model_len` end sequences in `postprocess`; `max_adapters`: distinct LoRA adapters
        in the running batch at most (the device slots; a request for another adapter waits its turn)."""
        if max_batch_tokens < 1 or max_num_seqs < 1:
            raise ValueError("max_batch_tokens and max_num_seqs must be positive")
        if max_prefill_tokens is not None and max_prefill_tokens < 1:
            raise ValueError("max_prefill_tokens must be positive")
        self.block_manager = block_manager
        self.max_batch_tokens = max_batch_tokens
        self.max_num_seqs = max_num_seqs
        self.max_prefill_tokens = min(max_prefill_tokens or max_batch_tokens, max_batch_tokens)
        self.eos_token_ids = set(eos_token_ids)
        self.max_model_len = max_model_len
        self.max_adapters = max_adapters
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
        preempted = stalled = False
        # 1. decodes
        for seq in [s for s in self.running if s.num_uncomputed_tokens == 1]:
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:  # preempted earlier in this pass
                continue
            # a speculative draft rides along when the budget and the free blocks allow, else it is dropped
            del seq.draft_ids[budget - 1 :]
            if seq.draft_ids and not self.block_manager.allocate(seq, 1 + len(seq.draft_ids)):
                seq.draft_ids = []
            while not self.block_manager.allocate(seq, 1):
                victim = self.running.pop()
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            if seq.status is SequenceStatus.RUNNING:
                scheduled.append(ScheduledSequence(seq, 1 + len(seq.draft_ids)))
                budget -= 1 + len(seq.draft_ids)
        # the cap protects decodes from a long step; with none running, prompts take the whole budget
        prefill = min(budget, self.max_prefill_tokens) if scheduled else budget
        # 2. prefill chunks of running sequences
        done = {id(e.seq) for e in scheduled}
        for seq in [s for s in self.running if id(s) not in done and s.num_uncomputed_tokens > 1]:
            if prefill == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:
                continue
            n = min(seq.num_uncomputed_tokens, prefill)
            while not self.block_manager.allocate(seq, n):
                victims = [s for s in self.running if id(s) not in done and s is not seq]
                if victims:
                    victim = victims[-1]
                elif not scheduled:  # nothing else runs: give its blocks back and retry it from the queue
                    victim = seq
                else:  # the scheduled decodes hold the blocks; the chunk waits for them to finish or yield
                    stalled = True
                    break
                self.running.remove(victim)
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            else:
                scheduled.append(ScheduledSequence(seq, n))
                done.add(id(seq))
                prefill -= n
                continue
            break
        # 3. new sequences, only when nothing had to be preempted or wait for blocks: else they would jump the queue
        while self.waiting and prefill > 0 and len(self.running) < self.max_num_seqs and not (preempted or stalled):
            seq = self.waiting[0]
            if seq.lora_id is not None and self.max_adapters is not None:
                active = {s.lora_id for s in self.running if s.lora_id is not None}
                if seq.lora_id not in active and len(active) >= self.max_adapters:
                    break  # FCFS: it waits until an adapter's slot frees up
            if not seq.block_table:
                self.block_manager.match_prefix(seq)
            n = min(seq.num_uncomputed_tokens, prefill)
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
            prefill -= n
        now = time.monotonic()
        for entry in scheduled:
            if entry.seq.first_scheduled_time is None:
                entry.seq.first_scheduled_time = now
        return scheduled

    def postprocess(
        self, batch: list[ScheduledSequence], samplers: list[ScheduledSequence], tokens: list[list[int]]
    ) -> None:
        """After the forward pass: the batch's tokens are computed (full blocks join the prefix cache), and each
        sampling sequence takes its new tokens (one, or with a draft the kept drafted tokens and one more); a
        sequence that finished gives its blocks back.

        Of a speculating decode's query only its last token and the kept drafts count as computed: the rejected
        drafts' K/V slots lie past that length, and the blocks holding nothing else go back to the free list."""
        for entry in batch:
            entry.seq.num_computed_tokens += entry.num_tokens - len(entry.seq.draft_ids)
            self.block_manager.commit_full_blocks(entry.seq)
        now = time.monotonic()
        for entry, new in zip(samplers, tokens, strict=True):
            seq = entry.seq
            appended = 0
            for token in new:
                seq.append_token(token, now)
                appended += 1
                seq.finish_reason = self._append_text(seq, token)
                if seq.finish_reason is not None:
                    break
            if seq.draft_ids:
                seq.num_computed_tokens += appended - 1  # the kept drafts' K/V are in the cache
                seq.draft_ids = []
                self.block_manager.trim(seq)
                self.block_manager.commit_full_blocks(seq)
            if seq.finish_reason is not None:
                self.finish(seq)

    def _append_text(self, seq: Sequence, token: int) -> str | None:
        """Decode `token` onto `seq.text` (cut at a stop string); why the sequence ends now ("stop", "length"), if it
        does."""
        params = seq.params
        assert seq.detokenizer is not None
        if token in params.stop_token_ids or (not params.ignore_eos and token in self.eos_token_ids):
            seq.text += seq.detokenizer.flush()
            return "stop"
        before = len(seq.text)
        seq.text += seq.detokenizer.step([token])
        if params.stop:
            start = max(0, before - max(len(s) for s in params.stop) + 1)
            hits = [i for i in (seq.text.find(s, start) for s in params.stop) if i >= 0]
            if hits:
                seq.text = seq.text[: min(hits)]
                return "stop"
        too_long = self.max_model_len is not None and seq.num_tokens >= self.max_model_len
        if seq.num_output_tokens >= params.max_tokens or too_long:
            seq.text += seq.detokenizer.flush()
            return "length"
        return None

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.free_sequence(seq)
        seq.draft_ids = []
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
