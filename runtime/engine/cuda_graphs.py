"""CUDA graphs for decode: the model's forward captured once per padded batch size, replayed every decode step.

On a GPU a small model's decode step is bounded by Python launching some hundred kernels, not by the GPU; a graph
replays them all in one call (gpt-fast and vLLM do the same). A decode-only batch of n sequences runs the graph of
the smallest captured size >= n; the padding rows attend to nothing (context length 0) and write their K/V into a
scratch block the block manager never hands out. Mixed prefill/decode steps and larger batches run eagerly.

Inputs live in one static device buffer (token ids, positions, slots, context lengths, block tables), filled by a
single host-to-device copy per step. Graphs need the Triton attention path (the PyTorch path sizes tensors from
the batch), so they are captured only when the Triton kernels serve. Not yet run on a GPU.
"""

from __future__ import annotations

import torch
from torch import Tensor

from infleet.runtime.config import CUDA_GRAPH_BATCH_SIZES
from infleet.runtime.kernels import dispatch
from infleet.runtime.model.attention import AttentionMetadata, KVCache, RowAttention
from infleet.runtime.model.llama import LlamaForCausalLM


class DecodeGraphs:
    """Captured decode graphs; `kv_caches` must have one extra block at the end (the scratch block)."""

    def __init__(
        self,
        model: LlamaForCausalLM,
        kv_caches: list[KVCache],
        block_size: int,
        max_blocks: int,
        sizes: tuple[int, ...] = CUDA_GRAPH_BATCH_SIZES,
    ) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.max_blocks = max_blocks
        self.sizes = sorted(sizes)
        self.max_bs = self.sizes[-1]
        device = kv_caches[0].k.device
        self.scratch_slot = (kv_caches[0].k.shape[0] - 1) * block_size
        n = self.max_bs
        self.layout = [n, n, n, n, n * max_blocks]  # ids, positions, slots, context lengths, block tables
        self.flat = torch.zeros(sum(self.layout), dtype=torch.long, device=device)
        self.host = torch.zeros(sum(self.layout), dtype=torch.long).pin_memory()
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, Tensor] = {}
        self._capture()

    def _views(self, t: Tensor, bs: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        ids, pos, slots, lens, tables = t.split(self.layout)
        return ids[:bs], pos[:bs], slots[:bs], lens[:bs], tables.view(self.max_bs, self.max_blocks)[:bs]

    def _forward(self, bs: int) -> Tensor:
        ids, pos, slots, lens, tables = self._views(self.flat, bs)
        empty = torch.empty((0,), dtype=torch.long, device=self.flat.device)
        meta = AttentionMetadata(
            slot_mapping=slots,
            num_decode=bs,
            decode_block_tables=empty.view(0, 0),
            decode_mask=empty.view(0, 1, 1, 0).bool(),
            rows=RowAttention(None, empty.view(0, 0), lens),
            prefills=[],
            block_tables=tables.to(torch.int32),
            context_lens=lens.to(torch.int32),
            prefill_tiles=torch.empty((0, 4), dtype=torch.int32, device=self.flat.device),
        )
        out: Tensor = self.model(ids, pos, self.kv_caches, meta)
        return out

    @torch.inference_mode()
    def _capture(self) -> None:
        pool = None
        self._fill([], [], [], self.max_bs)  # padding rows only: nothing real is written
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for bs in self.sizes:  # warm-up: Triton compiles its kernels outside the capture
                self._forward(bs)
        torch.cuda.current_stream().wait_stream(stream)
        for bs in reversed(self.sizes):  # largest first, then the rest share its memory pool
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[bs] = self._forward(bs)
            pool = graph.pool()
            self.graphs[bs] = graph
        torch.cuda.synchronize()

    def fits(self, query_lens: list[int]) -> bool:
        return dispatch.use_triton(self.flat) and 0 < len(query_lens) <= self.max_bs and all(q == 1 for q in query_lens)

    def _fill(self, input_ids: list[int], context_lens: list[int], tables: list[list[int]], bs: int) -> None:
        ids, pos, slots, lens, tab = self._views(self.host, bs)
        tab.zero_()
        lens.zero_()
        ids.zero_()
        pos.zero_()
        slots.fill_(self.scratch_slot)
        for i, (token, ctx, table) in enumerate(zip(input_ids, context_lens, tables, strict=True)):
            p = ctx - 1
            ids[i], pos[i], lens[i] = token, p, ctx
            slots[i] = table[p // self.block_size] * self.block_size + p % self.block_size
            nb = -(-ctx // self.block_size)
            tab[i, :nb] = torch.tensor(table[:nb])
        self.flat.copy_(self.host, non_blocking=True)  # the step's one host-to-device copy

    def run(self, input_ids: list[int], context_lens: list[int], tables: list[list[int]]) -> Tensor:
        """Hidden states `[n, hidden]` of a decode-only batch of n sequences."""
        n = len(input_ids)
        bs = next(s for s in self.sizes if s >= n)
        if max(context_lens) > self.max_blocks * self.block_size:
            raise ValueError(f"a context of {max(context_lens)} tokens exceeds the captured block tables")
        self._fill(input_ids, context_lens, tables, bs)
        self.graphs[bs].replay()
        return self.outputs[bs][:n]
