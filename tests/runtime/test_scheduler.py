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


def test_decodes_run_every_step_while_a_long_prompt_prefills_in_capped_chunks() -> None:
    """Step accounting, not wall clock: each running stream gets its token in every step, and the long prompt adds
    at most `max_prefill_tokens` to a step, so the step the decodes wait on stays short."""
    bm = BlockManager(256, 4)
    sched = Scheduler(bm, max_batch_tokens=64, max_num_seqs=8, max_prefill_tokens=16)
    streams = [make_seq(3, f"d{i}") for i in range(4)]
    for s in streams:
        sched.add(s)
    complete(sched.schedule(), bm)  # 12 prompt tokens in one step; all four decode from now on
    long = make_seq(200, "long")
    sched.add(long)
    steps = 0
    while long.num_output_tokens == 0:
        batch = sched.schedule()
        tokens = {e.seq.request_id: e.num_tokens for e in batch}
        assert all(tokens.get(s.request_id) == 1 for s in streams), tokens  # no stream skips a step
        assert tokens["long"] == min(16, 200 - 16 * steps)
        assert sum(tokens.values()) <= 4 + 16
        complete(batch, bm)
        steps += 1
    assert steps == -(-200 // 16)  # the prompt still advances by the whole cap every step
    assert all(s.num_output_tokens == 1 + steps for s in streams)


def test_with_no_decode_running_a_prompt_takes_the_whole_budget() -> None:
    bm = BlockManager(256, 4)
    sched = Scheduler(bm, max_batch_tokens=64, max_num_seqs=8, max_prefill_tokens=16)
    sched.add(make_seq(200, "alone"))
    assert [e.num_tokens for e in sched.schedule()] == [64]


def test_a_running_prefill_never_delays_decodes_behind_it_in_arrival_order() -> None:
    """After preemption a recomputing sequence can sit ahead of decoding ones; the decodes still go first."""
    bm = BlockManager(64, 4)
    sched = Scheduler(bm, max_batch_tokens=6, max_num_seqs=8)
    a, b = make_seq(20, "a"), make_seq(3, "b")
    sched.add(a)
    sched.add(b)
    a.status = b.status = SequenceStatus.RUNNING
    sched.waiting.clear()
    sched.running = [a, b]  # a arrived first and is mid-prompt; b is decoding
    b.num_computed_tokens = 2
    assert bm.allocate(b, 2)
    batch = sched.schedule()
    assert [(e.seq.request_id, e.num_tokens) for e in batch] == [("b", 1), ("a", 5)]


def test_prefill_cap_defaults_to_the_budget_and_must_be_positive() -> None:
    assert Scheduler(BlockManager(8, 4), max_batch_tokens=32, max_num_seqs=2).max_prefill_tokens == 32
    assert (
        Scheduler(BlockManager(8, 4), max_batch_tokens=32, max_num_seqs=2, max_prefill_tokens=99).max_prefill_tokens
        == 32
    )
    with pytest.raises(ValueError, match="max_prefill_tokens must be positive"):
        Scheduler(BlockManager(8, 4), max_batch_tokens=32, max_num_seqs=2, max_prefill_tokens=0)


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


def test_postprocess_appends_the_sampled_tokens_and_ends_finished_sequences(smollm2_tokenizer) -> None:  # type: ignore[no-untyped-def]
    bm = BlockManager(16, 4)
    sched = Scheduler(bm, max_batch_tokens=64, max_num_seqs=8, eos_token_ids={0}, max_model_len=64)
    prompt = smollm2_tokenizer.encode("The capital of France is")
    short = Sequence("short", list(prompt), len(prompt), SamplingParams(max_tokens=1))
    eos = Sequence("eos", list(prompt), len(prompt), SamplingParams(max_tokens=8))
    more = Sequence("more", list(prompt), len(prompt), SamplingParams(max_tokens=8))
    for seq in (short, eos, more):
        seq.detokenizer = smollm2_tokenizer.detokenizer(prompt)
        sched.add(seq)
    batch = sched.schedule()
    paris = smollm2_tokenizer.encode(" Paris", add_special_tokens=False)[0]
    sched.postprocess(batch, [e for e in batch if e.samples], [[paris], [0], [paris]])
    assert more.num_computed_tokens == len(prompt) and more.token_ids == [*prompt, paris]
    assert (short.finish_reason, short.text, short.token_ids[-1]) == ("length", " Paris", paris)
    assert (eos.finish_reason, eos.finished) == ("stop", True)
    assert more.finish_reason is None and more.text == " Paris" and more.first_token_time is not None
    assert sched.running == [more] and bm.num_free_blocks == 16 - len(more.block_table)
