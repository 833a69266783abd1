"""Scheduler: per-step token budget, chunked prefill, decodes first, admission limits, preemption by recompute."""

from __future__ import annotations

import pytest

from infleet.runtime.engine.kv_cache import BlockManager
from infleet.runtime.engine.sampler import SamplingParams
from infleet.runtime.engine.scheduler import ScheduledSequence, Scheduler
from infleet.runtime.engine.sequence import Sequence, SequenceStatus


def make_seq(n: int, rid: str) -> Sequence:
    start = 100 * (1 + sum(map(ord, rid)))  # distinct prompts: no accidental prefix sharing
    return Sequence(rid, list(range(start, start + n)), n, SamplingParams())


def complete(batch: list[ScheduledSequence], bm: BlockManager) -> None:
    """What the engine does after the forward pass: tokens computed, and one sampled where the step reached the end."""
    for entry in batch:
        sampled = entry.samples
        entry.seq.num_computed_tokens += entry.num_tokens
        bm.commit_full_blocks(entry.seq)
        if sampled:
            entry.seq.token_ids.append(1)


def test_budget_bounds_every_step_and_long_prompts_are_chunked() -> None:
    bm = BlockManager(64, 4)
    sched = Scheduler(bm, max_batch_tokens=10, max_num_seqs=8)
    seqs = [make_seq(n, f"s{i}") for i, n in enumerate([25, 3, 7])]
    for s in seqs:
        sched.add(s)
    first = sched.schedule()
    assert [(e.seq.request_id, e.num_tokens) for e in first] == [("s0", 10)]
    assert not first[0].samples
    complete(first, bm)
    steps = 1
    while any(s.num_output_tokens < 3 for s in seqs):
        batch = sched.schedule()
        assert 0 < sum(e.num_tokens for e in batch) <= 10
        complete(batch, bm)
        steps += 1
        assert steps < 50
    assert all(s.num_computed_tokens == s.num_tokens - 1 for s in seqs)


def test_running_decodes_are_served_before_new_prefills() -> None:
    bm = BlockManager(64, 4)
    sched = Scheduler(bm, max_batch_tokens=8, max_num_seqs=8)
    a = make_seq(4, "a")
    sched.add(a)
    complete(sched.schedule(), bm)  # a's prompt done, a decodes from now on
    b = make_seq(30, "b")
    sched.add(b)
    for _ in range(3):
        batch = sched.schedule()
        assert batch[0].seq is a and batch[0].num_tokens == 1  # never starved by b's long prompt
        assert batch[1].seq is b and batch[1].num_tokens == 7
        complete(batch, bm)


def test_max_num_seqs_limits_admission() -> None:
    sched = Scheduler(BlockManager(64, 4), max_batch_tokens=100, max_num_seqs=2)
    for i in range(4):
        sched.add(make_seq(3, f"s{i}"))
    assert len(sched.schedule()) == 2
    assert len(sched.waiting) == 2


def test_preemption_frees_blocks_and_requeues_at_the_front() -> None:
    bm = BlockManager(num_blocks=4, block_size=4)
    sched = Scheduler(bm, max_batch_tokens=64, max_num_seqs=8)
    a, b = make_seq(8, "a"), make_seq(8, "b")
    sched.add(a)
    sched.add(b)
    complete(sched.schedule(), bm)  # both hold 2 blocks; the cache is full
    assert bm.num_free_blocks == 0
    c = make_seq(2, "c")
    sched.add(c)
    batch = sched.schedule()  # a's 9th token needs a third block: b (admitted last) is preempted
    assert [e.seq.request_id for e in batch] == ["a"]
    assert b.status is SequenceStatus.WAITING and b.block_table == [] and b.num_computed_tokens == 0
    assert list(sched.waiting) == [b, c] and sched.num_preemptions == 1
    sched.finish(a)
    batch = sched.schedule()
    assert batch[0].seq is b and batch[0].num_tokens == b.num_tokens - 4  # its first block survived as a prefix hit


def test_a_request_larger_than_the_cache_is_refused_clearly() -> None:
    sched = Scheduler(BlockManager(2, 4), max_batch_tokens=64, max_num_seqs=8)
    sched.add(make_seq(20, "big"))
    with pytest.raises(RuntimeError, match="more KV blocks than the cache holds"):
        sched.schedule()
