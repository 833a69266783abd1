"""Block manager: allocation, reference counts, hash-chained prefix sharing, LRU eviction of free cached blocks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from infleet.runtime.engine.kv_cache import BlockManager, chain_hash
from infleet.runtime.engine.sampler import SamplingParams
from infleet.runtime.engine.sequence import Sequence


def make_seq(tokens: list[int], rid: str = "r") -> Sequence:
    return Sequence(rid, list(tokens), len(tokens), SamplingParams())


def run_prompt(bm: BlockManager, seq: Sequence) -> None:
    """What the engine does for a sequence that is admitted and fully computed."""
    bm.match_prefix(seq)
    assert bm.allocate(seq, seq.num_uncomputed_tokens)
    seq.num_computed_tokens = seq.num_tokens
    bm.commit_full_blocks(seq)


def test_allocate_grows_block_table_and_refuses_when_full() -> None:
    bm = BlockManager(num_blocks=4, block_size=4)
    seq = make_seq(list(range(10)))
    assert bm.allocate(seq, 10)
    assert len(seq.block_table) == 3 and bm.num_free_blocks == 1
    seq.num_computed_tokens = 10
    assert bm.allocate(seq, 2)  # still fits in block 3 (positions 10, 11)
    assert len(seq.block_table) == 3
    assert bm.allocate(seq, 3)  # positions 10..12 need a 4th block
    assert len(seq.block_table) == 4 and bm.num_free_blocks == 0
    other = make_seq([1])
    assert not bm.allocate(other, 1)
    assert other.block_table == []  # a refused allocation changes nothing
    bm.free_sequence(seq)
    assert bm.num_free_blocks == 4 and bm.usage == 0.0


def test_prefix_hit_shares_blocks_and_counts_references() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    a = make_seq(list(range(10)), "a")
    run_prompt(bm, a)
    b = make_seq([*range(8), 99, 98, 97], "b")
    assert bm.match_prefix(b) == 8
    assert b.block_table == a.block_table[:2]
    assert [bm.blocks[i].ref_count for i in a.block_table] == [2, 2, 1]
    assert (bm.prefix_queries, bm.prefix_hits) == (21, 8)
    bm.free_sequence(a)
    assert [bm.blocks[i].ref_count for i in b.block_table] == [1, 1]


def test_full_prompt_hit_leaves_the_last_token_to_compute() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    run_prompt(bm, make_seq(list(range(8)), "a"))
    again = make_seq(list(range(8)), "b")
    assert bm.match_prefix(again) == 4  # the second block would leave nothing to compute: it is recomputed
    assert again.num_uncomputed_tokens == 4


def test_hash_chains_on_the_prefix() -> None:
    bm = BlockManager(num_blocks=8, block_size=2)
    run_prompt(bm, make_seq([1, 2, 3, 4, 5], "a"))
    # Same second block, different first block: no hit, because the hash covers the whole prefix.
    assert bm.match_prefix(make_seq([9, 9, 3, 4, 5], "b")) == 0
    assert chain_hash(None, (1, 2)) != chain_hash(chain_hash(None, (9, 9)), (1, 2))


def test_freed_cached_blocks_survive_until_evicted_least_recent_first() -> None:
    bm = BlockManager(num_blocks=4, block_size=2)
    old = make_seq([1, 2, 3], "old")  # blocks: [1,2] full (cached), [3] partial
    run_prompt(bm, old)
    new = make_seq([5, 6, 7], "new")
    run_prompt(bm, new)
    bm.free_sequence(old)
    bm.free_sequence(new)
    assert len(bm.cached) == 2 and bm.num_free_blocks == 4
    # Uncached (partial) blocks go first, then the least recently freed cached block.
    filler = make_seq([0], "f")
    assert bm.allocate(filler, 6)
    assert len(bm.cached) == 1
    assert bm.match_prefix(make_seq([5, 6, 0], "x")) == 2  # the newer prefix survived
    assert bm.match_prefix(make_seq([1, 2, 0], "y")) == 0  # the older one was evicted


def test_prefix_caching_off_never_hits() -> None:
    bm = BlockManager(num_blocks=8, block_size=2, enable_prefix_caching=False)
    run_prompt(bm, make_seq([1, 2, 3], "a"))
    assert bm.match_prefix(make_seq([1, 2, 3], "b")) == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "grow", "free"]), st.integers(0, 5), st.integers(1, 9)), max_size=40))
def test_reference_counts_stay_consistent(ops: list[tuple[str, int, int]]) -> None:
    """Whatever the interleaving, a block's count equals the number of tables holding it, and free means zero."""
    bm = BlockManager(num_blocks=12, block_size=4)
    live: dict[int, Sequence] = {}
    for op, key, n in ops:
        seq = live.get(key)
        if op == "add" and seq is None:
            s = make_seq([key % 2] * n + list(range(n)), str(key))  # shared leading tokens give prefix hits
            bm.match_prefix(s)
            if bm.allocate(s, s.num_uncomputed_tokens):
                s.num_computed_tokens = s.num_tokens
                bm.commit_full_blocks(s)
                live[key] = s
            else:
                bm.free_sequence(s)
        elif op == "grow" and seq is not None:
            if bm.allocate(seq, n):
                seq.token_ids.extend([7] * n)
                seq.num_computed_tokens = seq.num_tokens
                bm.commit_full_blocks(seq)
        elif op == "free" and seq is not None:
            bm.free_sequence(live.pop(key))
        counts = [0] * bm.num_blocks
        for s in live.values():
            for b in s.block_table:
                counts[b] += 1
        assert [b.ref_count for b in bm.blocks] == counts
        assert set(bm.free) == {i for i, c in enumerate(counts) if c == 0}
        for h, block_id in bm.cached.items():
            assert bm.blocks[block_id].hash == h
