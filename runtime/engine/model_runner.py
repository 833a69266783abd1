"""Turns a scheduled batch into one forward pass: flattened tokens, positions, paged-attention metadata, logits.

It owns the KV cache tensors (one `KVCache` per decoder layer of the model instance it drives), on the model's
device; a step's inputs reach that device in one copy (`StepInputs`). On CUDA, decode-only steps replay CUDA
graphs captured at padded batch sizes (`cuda_graphs.py`) unless the runner is eager.

A request that asks for prompt log-probabilities (`echo` with `logprobs`) gets them here, from the logits of every
prompt position of its prefill chunks: the model's own log-softmax (no penalty, bias or temperature applies to a
prompt token), stored on the sequence.

With LoRA on, the step tells the adapter manager which rows use which adapter before the forward pass (a step with
adapter rows runs eagerly: CUDA graphs are captured for the base model only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from infleet.runtime.engine.sampler import token_logprobs
from infleet.runtime.engine.scheduler import ScheduledSequence
from infleet.runtime.kernels import dispatch

if TYPE_CHECKING:
    from infleet.runtime.engine.cuda_graphs import DecodeGraphs
    from infleet.runtime.lora.manager import LoRAManager
from infleet.runtime.model.attention import KVCache, StepInputs
from infleet.runtime.model.llama import LlamaForCausalLM


def kv_bytes_per_token(model: LlamaForCausalLM, dtype: torch.dtype) -> int:
    c = model.config
    return 2 * model.num_layers * c.num_key_value_heads * c.head_dim * torch.empty((), dtype=dtype).element_size()


class ModelRunner:
    computes_prompt_logprobs = True  # the engine refuses prompt_logprobs for runners that do not

    def __init__(
        self,
        model: LlamaForCausalLM,
        *,
        num_blocks: int,
        block_size: int,
        kv_dtype: torch.dtype,
        enforce_eager: bool = True,
        max_model_len: int | None = None,
        lora: LoRAManager | None = None,
    ) -> None:
        self.model = model
        self.lora = lora
        self.block_size = block_size
        c = model.config
        self.device = next(model.parameters()).device
        graphs = not enforce_eager and self.device.type == "cuda"
        allocated = num_blocks + 1 if graphs else num_blocks  # graphs: a scratch block for padding rows
        self.kv_caches = [
            KVCache.allocate(allocated, block_size, c.num_key_value_heads, c.head_dim, kv_dtype, self.device)
            for _ in range(model.num_layers)
        ]
        self.graphs: DecodeGraphs | None = None
        if graphs:
            from infleet.runtime.engine.cuda_graphs import DecodeGraphs

            max_blocks = -(-(max_model_len or c.max_position_embeddings) // block_size)
            self.graphs = DecodeGraphs(model, self.kv_caches, block_size, max_blocks)

    @torch.inference_mode()
    def run(self, batch: list[ScheduledSequence]) -> tuple[list[ScheduledSequence], Tensor]:
        """Compute the batch's new tokens; returns the entries that sample and their logits (`[rows, vocab]`): one
        row each, or with a speculative draft one for the decode's last token and one per drafted token."""
        ordered = sorted(batch, key=lambda s: s.num_tokens != 1)  # single-token decodes first (stable)
        input_ids: list[int] = []
        query_lens, context_lens, tables = [], [], []
        sample_rows: list[int] = []
        samplers: list[ScheduledSequence] = []
        prompt_rows: list[tuple[ScheduledSequence, int]] = []  # entries that want prompt logprobs, first row
        for entry in ordered:
            seq, n = entry.seq, entry.num_tokens
            start = seq.num_computed_tokens
            if seq.params.prompt_logprobs is not None and start < seq.prompt_len - 1:
                prompt_rows.append((entry, len(input_ids)))
            draft = seq.draft_ids
            input_ids.extend((seq.token_ids + draft)[start : start + n] if draft else seq.token_ids[start : start + n])
            query_lens.append(n)
            context_lens.append(start + n)
            tables.append(seq.block_table)
            if entry.samples:
                sample_rows.extend(range(len(input_ids) - 1 - len(draft), len(input_ids)))
                samplers.append(entry)
        float_rows = (  # int8 on the CPU: the rows that take the float GEMM (dispatch.prompt_mask)
            dispatch.prompt_mask((e.seq.prompt_len, e.seq.num_computed_tokens, e.num_tokens) for e in ordered)
            if self.device.type == "cpu"
            else None
        )
        if self.lora is not None and self.lora.begin([(e.seq.lora_id, e.num_tokens) for e in ordered]):
            try:
                return samplers, self._forward(
                    input_ids, query_lens, context_lens, tables, sample_rows, prompt_rows, float_rows
                )
            finally:
                self.lora.end()
        if self.graphs is not None and not prompt_rows and self.graphs.fits(query_lens):
            hidden = self.graphs.run(input_ids, context_lens, tables)  # every row, padding dropped
            if len(sample_rows) < len(input_ids):  # a one-token prefill chunk that does not sample
                hidden = hidden[sample_rows]
            return samplers, self.model.compute_logits(hidden)
        return samplers, self._forward(
            input_ids, query_lens, context_lens, tables, sample_rows, prompt_rows, float_rows
        )

    def _forward(
        self,
        input_ids: list[int],
        query_lens: list[int],
        context_lens: list[int],
        tables: list[list[int]],
        sample_rows: list[int],
        prompt_rows: list[tuple[ScheduledSequence, int]],
        prompt_mask: Tensor | None = None,
    ) -> Tensor:
        """The eager forward pass: the sampled rows' logits (and prompt log-probabilities where asked).
        `prompt_mask`: the rows int8 layers compute as prompt rows (`dispatch.prompt_rows`)."""
        step = StepInputs.build(input_ids, query_lens, context_lens, tables, self.block_size, sample_rows, self.device)
        with dispatch.prompt_rows(prompt_mask):
            hidden = self.model(step.input_ids, step.positions, self.kv_caches, step.meta)
        for entry, row in prompt_rows:
            self._prompt_logprobs(entry, hidden[row : row + entry.num_tokens])
        return self.model.compute_logits(hidden.index_select(0, step.sample_rows))

    def _prompt_logprobs(self, entry: ScheduledSequence, hidden: Tensor) -> None:
        """Log-probabilities of the prompt tokens this chunk's positions predict, not already known (a sequence
        recomputed after preemption keeps the ones it has)."""
        seq = entry.seq
        start = seq.num_computed_tokens
        first = len(seq.prompt_logprobs)  # position `first` predicts prompt token `first + 1`
        end = min(start + entry.num_tokens, seq.prompt_len - 1)
        if end <= max(first, start):
            return
        rows = hidden[max(first, start) - start : end - start]
        targets = seq.token_ids[max(first, start) + 1 : end + 1]
        k = seq.params.prompt_logprobs or 0
        seq.prompt_logprobs.extend(token_logprobs(self.model.compute_logits(rows), targets, [k] * len(targets)))
