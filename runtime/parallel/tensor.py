"""Tensor parallelism (Megatron-style) for the Llama decoder.

Column-parallel: q/k/v and gate/up keep only this rank's output rows (its attention heads, its slice of the FFN),
so attention and the SwiGLU run locally. Row-parallel: o_proj and down_proj keep the matching input columns and
produce partial sums, added up by one all-reduce after attention and one after the MLP. The embedding and the LM
head are split by vocabulary rows: each rank embeds the ids it owns (zeros elsewhere, then all-reduce) and computes
the logits of its rows (then all-gather).

KV heads are split like query heads when `tensor` divides them; when `tensor` is a multiple of the KV head count,
each KV head is replicated on `tensor / kv_heads` ranks, whose query heads all belong to it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from infleet.runtime.config import ModelConfig


@dataclass(frozen=True)
class TensorShard:
    """Which heads, FFN columns and vocabulary rows tensor rank `rank` of `size` holds."""

    rank: int
    size: int
    config: ModelConfig

    @staticmethod
    def check(config: ModelConfig, size: int) -> None:
        """A clear error for head counts this sharding cannot split."""
        heads, kv = config.num_attention_heads, config.num_key_value_heads
        if heads % size:
            raise ValueError(f"--tensor-parallel {size} does not divide the model's {heads} attention heads")
        if kv % size and size % kv:
            raise ValueError(f"--tensor-parallel {size} neither divides the {kv} KV heads nor is a multiple of them")
        if config.intermediate_size % size:
            raise ValueError(f"--tensor-parallel {size} does not divide the FFN size {config.intermediate_size}")

    @property
    def heads(self) -> range:
        n = self.config.num_attention_heads // self.size
        return range(self.rank * n, (self.rank + 1) * n)

    @property
    def kv_heads(self) -> range:
        kv = self.config.num_key_value_heads
        if kv % self.size == 0:
            n = kv // self.size
            return range(self.rank * n, (self.rank + 1) * n)
        head = self.rank // (self.size // kv)  # replicated: the one KV head this rank's query heads share
        return range(head, head + 1)

    @property
    def ffn(self) -> range:
        n = self.config.intermediate_size // self.size
        return range(self.rank * n, (self.rank + 1) * n)

    @property
    def vocab_per_rank(self) -> int:
        return -(-self.config.vocab_size // self.size)

    @property
    def vocab(self) -> range:
        n = self.vocab_per_rank
        return range(min(self.rank * n, self.config.vocab_size), min((self.rank + 1) * n, self.config.vocab_size))

    def local_config(self) -> ModelConfig:
        """The shape one rank's modules have: its heads, its FFN slice, its (padded) vocabulary rows."""
        return dataclasses.replace(
            self.config,
            num_attention_heads=len(self.heads),
            num_key_value_heads=len(self.kv_heads),
            intermediate_size=len(self.ffn),
            vocab_size=self.vocab_per_rank,
        )

    def rows(self, name: str) -> tuple[int, range] | None:
        """For a Hugging Face weight name: (dimension, index range) this rank keeps, or None for all of it."""
        d = self.config.head_dim
        if name.endswith(("q_proj.weight", "q_proj.bias")):  # a bias is split like its weight's output rows
            return 0, range(self.heads.start * d, self.heads.stop * d)
        if name.endswith(("k_proj.weight", "v_proj.weight", "k_proj.bias", "v_proj.bias")):
            return 0, range(self.kv_heads.start * d, self.kv_heads.stop * d)
        if name.endswith("o_proj.weight"):
            return 1, range(self.heads.start * d, self.heads.stop * d)
        if name.endswith(("gate_proj.weight", "up_proj.weight")):
            return 0, self.ffn
        if name.endswith("down_proj.weight"):
            return 1, self.ffn
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            return 0, self.vocab
        return None


def all_reduce_output(module: nn.Module, group: dist.ProcessGroup) -> None:
    """Make a row-parallel block (attention or MLP) return the sum over the tensor group of its partial outputs."""

    def hook(_: nn.Module, __: tuple[Tensor, ...], output: Tensor) -> Tensor:
        dist.all_reduce(output, group=group)
        return output

    module.register_forward_hook(hook)


class VocabParallelEmbedding(nn.Module):
    """This rank's rows of the embedding; ids it does not own embed to zero, and the all-reduce fills them in."""

    def __init__(self, shard: TensorShard, hidden: int, group: dist.ProcessGroup | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(shard.vocab_per_rank, hidden))
        self.start, self.stop = shard.vocab.start, shard.vocab.stop
        self.group = group

    def forward(self, ids: Tensor) -> Tensor:
        if self.group is None:
            return F.embedding(ids, self.weight)
        outside = (ids < self.start) | (ids >= self.stop)
        out = F.embedding((ids - self.start).masked_fill(outside, 0), self.weight)
        out.masked_fill_(outside[:, None], 0.0)
        dist.all_reduce(out, group=self.group)
        return out


class VocabParallelLMHead(nn.Module):
    """Logits of this rank's vocabulary rows, gathered across the tensor group into the full vocabulary."""

    def __init__(self, shard: TensorShard, hidden: int, group: dist.ProcessGroup | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(shard.vocab_per_rank, hidden))
        self.vocab_size = shard.config.vocab_size
        self.size = shard.size
        self.group = group

    def forward(self, hidden: Tensor) -> Tensor:
        local = F.linear(hidden, self.weight).float()
        if self.group is None:
            return local[:, : self.vocab_size]
        parts = [torch.empty_like(local) for _ in range(self.size)]
        dist.all_gather(parts, local.contiguous(), group=self.group)
        return torch.cat(parts, dim=-1)[:, : self.vocab_size]
