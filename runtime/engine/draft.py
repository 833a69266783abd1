"""Speculative drafts from a smaller model served in the same process (`--speculative-method draft`).

The draft model shares the target's vocabulary (`check_compatible` refuses one that does not: a drafted id must mean
the same token to both). It runs the same Llama code over its own paged KV cache: its own KV tensors and its own
block tables, drawn from a free list (`DraftModel.num_blocks`), one table per running sequence. Each sequence's draft
cache holds the K/V of a prefix of its tokens (`_State.tokens`); before drafting, that prefix is cut back to the
longest one the sequence still has (`_rollback`), which is how the draft cache forgets rejected drafts, exactly as the
target's computed length does. The gap up to the last token is then computed in one forward pass (a chunk, like a
prefill, the first time), and k-1 more single-token passes extend the draft.

Each drafted token comes with the distribution q it was drawn from: greedy requests take the argmax (q is a point
mass, and greedy verification needs no q); sampled requests draw from q, the draft's processed distribution
(temperature, top-k, top-p), with the request's generator, and `verify` accepts with min(1, p/q): that test is
exact only for x drawn from q (not its argmax), and it keeps sum(min(p, q)) of the drafts where treating x as a point
mass would keep sum(p q).

A sequence leaving the running batch (finished, aborted, preempted) gives its draft blocks back on the next call.
When the free list runs dry a sequence simply does not draft that step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from infleet.runtime.config import ModelConfig
from infleet.runtime.engine.sequence import Sequence
from infleet.runtime.engine.speculative import processed_probs
from infleet.runtime.model.attention import KVCache, StepInputs
from infleet.runtime.model.llama import LlamaForCausalLM
from infleet.runtime.tokenizer import Tokenizer


def check_compatible(
    target: ModelConfig, target_tok: Tokenizer, draft: ModelConfig, draft_tok: Tokenizer, max_model_len: int
) -> None:
    """Raise ValueError unless the draft's token ids mean what the target's do and its positions reach far enough."""
    if draft.vocab_size != target.vocab_size:
        raise ValueError(
            f"--speculative-draft-model: its vocabulary has {draft.vocab_size} entries, the model's "
            f"{target.vocab_size}; a draft model must share the model's tokenizer"
        )
    if draft_tok.hf.get_vocab(with_added_tokens=True) != target_tok.hf.get_vocab(with_added_tokens=True):
        raise ValueError(
            "--speculative-draft-model: its tokenizer maps tokens to different ids than the model's; a draft model "
            "must share the model's tokenizer"
        )
    if draft.max_position_embeddings < max_model_len:
        raise ValueError(
            f"--speculative-draft-model: it handles {draft.max_position_embeddings} positions, fewer than "
            f"--max-model-len {max_model_len}"
        )


@dataclass
class _State:
    seq: Sequence  # held so that its id is not reused while the state lives
    tokens: list[int] = field(default_factory=list)  # the tokens whose K/V are in the draft cache, in order
    table: list[int] = field(default_factory=list)


class DraftModel:
    """A small model and its paged KV cache, drafting k tokens per sequence per step."""

    def __init__(self, model: LlamaForCausalLM, *, num_blocks: int, block_size: int, kv_dtype: torch.dtype) -> None:
        self.model = model
        self.block_size = block_size
        self.num_blocks = num_blocks
        c = model.config
        self.device = next(model.parameters()).device
        self.kv_caches = [
            KVCache.allocate(num_blocks, block_size, c.num_key_value_heads, c.head_dim, kv_dtype, self.device)
            for _ in range(model.num_layers)
        ]
        self.free: list[int] = list(range(num_blocks - 1, -1, -1))
        self.states: dict[int, _State] = {}

    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    def release(self, running: list[Sequence]) -> None:
        """Give back the blocks of sequences that left the running batch."""
        live = {id(s) for s in running}
        for key in [k for k in self.states if k not in live]:
            self.free.extend(self.states.pop(key).table)

    @torch.inference_mode()
    def propose(self, wanted: list[tuple[Sequence, int]]) -> None:
        """Set `draft_ids` (up to k tokens) and, for sampled requests, `draft_probs` (`[len(draft), vocab]`) of
        each (sequence, k); a sequence whose blocks cannot be found drafts nothing."""
        todo: list[tuple[_State, int]] = []
        for seq, k in wanted:
            state = self.states.setdefault(id(seq), _State(seq))
            self._rollback(state)
            if self._reserve(state, len(seq.token_ids) + k - 1):
                todo.append((state, k))
        feed = {id(s.seq): s.seq.token_ids[len(s.tokens) :] for s, _ in todo}
        for step in range(max((k for _, k in todo), default=0)):
            active = [(s, k) for s, k in todo if k > step]
            rows = self._forward([(s, feed[id(s.seq)]) for s, _ in active])
            for (state, _), row in zip(active, rows, strict=True):
                seq = state.seq
                token, q = self._choose(row, seq)
                seq.draft_ids.append(token)
                if q is not None:
                    seq.draft_probs = q[None] if seq.draft_probs is None else torch.cat([seq.draft_probs, q[None]])
                feed[id(seq)] = [token]

    def _rollback(self, state: _State) -> None:
        """Keep the longest prefix of the cached tokens that the sequence still has, short of its last token (whose
        logits start the draft)."""
        tokens = state.seq.token_ids
        limit = min(len(state.tokens), len(tokens) - 1)
        same = 0
        while same < limit and state.tokens[same] == tokens[same]:
            same += 1
        del state.tokens[same:]
        state.seq.draft_ids = []
        state.seq.draft_probs = None

    def _reserve(self, state: _State, num_positions: int) -> bool:
        """Blocks for positions below `num_positions`, if the free list has them."""
        need = -(-num_positions // self.block_size) - len(state.table)
        if need > len(self.free):
            return False
        for _ in range(need):
            state.table.append(self.free.pop())
        return True

    def _forward(self, entries: list[tuple[_State, list[int]]]) -> list[Tensor]:
        """One pass over each entry's new tokens (appended to its cached prefix); the logits row of each's last."""
        order = sorted(range(len(entries)), key=lambda i: len(entries[i][1]) != 1)  # single tokens first
        input_ids: list[int] = []
        query_lens, context_lens, tables, sample_rows = [], [], [], []
        for i in order:
            state, new = entries[i]
            input_ids.extend(new)
            query_lens.append(len(new))
            context_lens.append(len(state.tokens) + len(new))
            tables.append(state.table)
            sample_rows.append(len(input_ids) - 1)
            state.tokens.extend(new)
        step = StepInputs.build(input_ids, query_lens, context_lens, tables, self.block_size, sample_rows, self.device)
        hidden = self.model(step.input_ids, step.positions, self.kv_caches, step.meta)
        logits = self.model.compute_logits(hidden.index_select(0, step.sample_rows))
        rows: list[Tensor] = [logits[0]] * len(entries)
        for j, i in enumerate(order):
            rows[i] = logits[j]
        return rows

    @staticmethod
    def _choose(row: Tensor, seq: Sequence) -> tuple[int, Tensor | None]:
        """The drafted token and the distribution it was drawn from (None for greedy: a point mass)."""
        if seq.params.greedy:
            return int(row.argmax()), None
        q = processed_probs(row[None], seq.params)[0]
        return int(torch.multinomial(q, 1, generator=seq.generator)[0]), q
