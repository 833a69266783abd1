"""Turns a scheduled batch into one forward pass: flattened tokens, positions, paged-attention metadata, logits.

It owns the KV cache tensors (one `KVCache` per decoder layer of the model instance it drives).
"""

from __future__ import annotations

import torch
from torch import Tensor

from infleet.runtime.engine.scheduler import ScheduledSequence
from infleet.runtime.model.attention import AttentionMetadata, KVCache
from infleet.runtime.model.llama import LlamaForCausalLM


def kv_bytes_per_token(model: LlamaForCausalLM, dtype: torch.dtype) -> int:
    c = model.config
    return 2 * model.num_layers * c.num_key_value_heads * c.head_dim * torch.empty((), dtype=dtype).element_size()


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, *, num_blocks: int, block_size: int, kv_dtype: torch.dtype) -> None:
        self.model = model
        self.block_size = block_size
        c = model.config
        self.kv_caches = [
            KVCache.allocate(num_blocks, block_size, c.num_key_value_heads, c.head_dim, kv_dtype)
            for _ in range(model.num_layers)
        ]

    @torch.inference_mode()
    def run(self, batch: list[ScheduledSequence]) -> tuple[list[ScheduledSequence], Tensor]:
        """Compute the batch's new tokens; returns the entries that sample and their logits (`[n, vocab]`)."""
        ordered = sorted(batch, key=lambda s: s.num_tokens != 1)  # single-token decodes first (stable)
        input_ids: list[int] = []
        positions: list[int] = []
        query_lens, context_lens, tables = [], [], []
        sample_rows: list[int] = []
        samplers: list[ScheduledSequence] = []
        for entry in ordered:
            seq, n = entry.seq, entry.num_tokens
            start = seq.num_computed_tokens
            input_ids.extend(seq.token_ids[start : start + n])
            positions.extend(range(start, start + n))
            query_lens.append(n)
            context_lens.append(start + n)
            tables.append(seq.block_table)
            if entry.samples:
                sample_rows.append(len(input_ids) - 1)
                samplers.append(entry)
        meta = AttentionMetadata.build(query_lens, context_lens, tables, self.block_size)
        hidden = self.model(torch.tensor(input_ids), torch.tensor(positions), self.kv_caches, meta)
        logits = self.model.compute_logits(hidden[torch.tensor(sample_rows, dtype=torch.long)])
        return samplers, logits
