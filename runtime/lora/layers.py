"""A projection with LoRA slots: the base layer (any tier) plus the deltas of the adapters a step's tokens use.

Every wrapped projection holds the resident adapters stacked and zero-padded to the largest rank: `a`
`[slots, r_max, in]` and `b` `[slots, r_max, out]` (B transposed, scaling folded in). A step hands all wrapped
layers one `LoRABatch`: the rows (tokens) that belong to an adapter and a one-hot mask of each row's slot.
For those rows only, the delta is two matmuls over all slots at once, `((x @ A_all^T) * mask) @ B_all`: the
rank-`slots x r_max` shrink, the mask that keeps each token's own slot (zero padding keeps smaller ranks exact),
and the expand. That is the BGMV computation (every token gathers its adapter's A and B) without copying weights
per token, and without one matmul per adapter; its cost is that of a single LoRA of rank `slots x r_max`.
A step without adapter rows skips all of it: base rows pay nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class LoRABatch:
    """The current step's adapter rows, shared by every wrapped layer; `rows` is None when no token uses one."""

    rows: Tensor | None = None  # [n] token indices in the flattened batch
    mask: Tensor | None = None  # [n, slots * r_max] 1 on the row's slot's columns, 0 elsewhere
    all_rows: bool = False  # every token uses an adapter: no gather or scatter


class LoRALinear(nn.Module):
    """`base(x)` plus each adapter row's delta, added in the activation dtype."""

    a: Tensor
    b: Tensor

    def __init__(
        self, base: nn.Module, batch: LoRABatch, slots: int, max_rank: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        super().__init__()
        self.base = base
        self.batch = batch
        self.in_features: int = base.in_features  # type: ignore[assignment]
        self.out_features: int = base.out_features  # type: ignore[assignment]
        self.max_rank = max_rank
        self.register_buffer("a", torch.zeros(slots * max_rank, self.in_features, dtype=dtype, device=device))
        self.register_buffer("b", torch.zeros(slots * max_rank, self.out_features, dtype=dtype, device=device))

    def set_slot(self, slot: int, weights: tuple[Tensor, Tensor] | None) -> None:
        """Write one adapter's A `[r, in]` and scaled B `[out, r]` into `slot` (None: this adapter skips the layer)."""
        cols = slice(slot * self.max_rank, (slot + 1) * self.max_rank)
        self.a[cols].zero_()
        self.b[cols].zero_()
        if weights is not None:
            a, b = weights
            r = a.shape[0]
            self.a[cols][:r].copy_(a)
            self.b[cols][:r].copy_(b.t())

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.base(x)
        batch = self.batch
        if batch.rows is None:
            return out
        assert batch.mask is not None
        xs = x if batch.all_rows else x.index_select(0, batch.rows)
        shrunk = (xs.to(self.a.dtype) @ self.a.t()) * batch.mask  # [n, slots * r_max]
        delta = (shrunk @ self.b).to(out.dtype)
        if batch.all_rows:
            return out + delta
        return out.index_add_(0, batch.rows, delta)
