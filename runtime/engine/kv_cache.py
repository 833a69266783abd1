"""The KV cache's block manager: fixed-size blocks, per-sequence block tables, automatic prefix caching.

A block that is full and computed gets a hash chained on its predecessor's (so equal hashes mean equal prefixes)
and is registered under it. A later prompt starting with the same tokens shares those blocks (reference counts)
instead of recomputing them. Blocks whose count drops to zero go to the free list but keep their contents and
hash until reused: the free list is the LRU eviction order (blocks that hold no cached prefix are reused first).

Block hashes are `infleet.api.prefix.chain_hash`, the one the gateway computes too: a listener (the server's KV event
stream) hears every hash stored and evicted, so the gateway can route a prompt to the replica that holds its prefix.
A LoRA adapter's sequences start their chain from the adapter's own root (`Sequence.hash_root`): the same tokens
through another adapter have other keys and values, so they never share blocks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from infleet.api.prefix import chain_hash
from infleet.runtime.engine.sequence import Sequence

STORED, REMOVED = "stored", "removed"
Listener = Callable[[str, list[int]], None]  # (STORED or REMOVED, block hashes), called on the engine's thread


@dataclass(eq=False)
class Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None
    token_ids: tuple[int, ...] = ()  # kept with the hash so a hash collision cannot alias two prefixes


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))  # front: reuse first
        self.cached: dict[int, int] = {}  # chain hash -> block id
        self.prefix_queries = 0  # prompt tokens looked up, and found, since the start
        self.prefix_hits = 0
        self.listener: Listener | None = None

    # --- capacity -----------------------------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    @property
    def usage(self) -> float:
        return 1.0 - len(self.free) / len(self.blocks)

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        total = seq.num_computed_tokens + num_new_tokens
        return max(0, -(-total // self.block_size) - len(seq.block_table))

    # --- allocation ------------------------------------------------------------------------------------------------
    def _take_free(self) -> Block:
        block_id, _ = self.free.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None:  # evict its cached prefix
            if self.cached.get(block.hash) == block_id:
                del self.cached[block.hash]
                if self.listener:
                    self.listener(REMOVED, [block.hash])
            block.hash, block.token_ids = None, ()
        block.ref_count = 1
        return block

    def match_prefix(self, seq: Sequence) -> int:
        """For a sequence about to start: share the cached blocks its tokens begin with; returns tokens covered.

        At least one token is always left to compute, since sampling needs the last position's logits.
        """
        assert not seq.block_table and seq.num_computed_tokens == 0
        self.prefix_queries += seq.num_tokens
        if not self.enable_prefix_caching or seq.params.prompt_logprobs is not None:  # those need every prompt logit
            return 0
        bs = self.block_size
        parent = seq.hash_root
        for i in range((seq.num_tokens - 1) // bs):
            tokens = tuple(seq.token_ids[i * bs : (i + 1) * bs])
            h = chain_hash(parent, tokens)
            block_id = self.cached.get(h)
            if block_id is None or self.blocks[block_id].token_ids != tokens:
                break
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.free[block_id]
            block.ref_count += 1
            seq.block_table.append(block_id)
            seq.block_hashes.append(h)
            parent = h
        seq.num_computed_tokens = len(seq.block_table) * bs
        self.prefix_hits += seq.num_computed_tokens
        return seq.num_computed_tokens

    def allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Grow the block table to hold `num_new_tokens` more tokens; False (and no change) if blocks run out."""
        needed = self.blocks_needed(seq, num_new_tokens)
        if needed > len(self.free):
            return False
        for _ in range(needed):
            seq.block_table.append(self._take_free().block_id)
        return True

    def share(self, block_ids: list[int]) -> None:
        """One more reference to each of these blocks (in use by another sequence): a fork of a request's choices."""
        for block_id in block_ids:
            self.blocks[block_id].ref_count += 1

    def commit_full_blocks(self, seq: Sequence) -> None:
        """Register the blocks that became full and computed, so later prompts can share them."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        full = min(seq.num_computed_tokens // bs, len(seq.block_table))
        stored = []
        for i in range(len(seq.block_hashes), full):
            tokens = tuple(seq.token_ids[i * bs : (i + 1) * bs])
            h = chain_hash(seq.block_hashes[-1] if seq.block_hashes else seq.hash_root, tokens)
            seq.block_hashes.append(h)
            block = self.blocks[seq.block_table[i]]
            if block.hash is None and h not in self.cached:
                block.hash, block.token_ids = h, tokens
                self.cached[h] = block.block_id
                stored.append(h)
        if stored and self.listener:
            self.listener(STORED, stored)

    def trim(self, seq: Sequence) -> None:
        """Give back the blocks past the sequence's computed tokens (a rejected speculative draft's slots)."""
        keep = -(-seq.num_computed_tokens // self.block_size)
        for block_id in reversed(seq.block_table[keep:]):
            self._release(block_id)
        del seq.block_table[keep:]

    def free_sequence(self, seq: Sequence) -> None:
        """Drop the sequence's references; blocks are released tail first, so a prefix's tail is evicted first."""
        for block_id in reversed(seq.block_table):
            self._release(block_id)
        seq.block_table = []
        seq.block_hashes = []
        seq.num_computed_tokens = 0

    def _release(self, block_id: int) -> None:
        block = self.blocks[block_id]
        block.ref_count -= 1
        assert block.ref_count >= 0, f"block {block_id} freed twice"
        if block.ref_count == 0:
            self.free[block_id] = None
            if block.hash is None:  # holds nothing reusable: hand it out before any cached block
                self.free.move_to_end(block_id, last=False)
