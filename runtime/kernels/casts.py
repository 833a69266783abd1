"""Casts that cost nothing when there is nothing to do."""

from __future__ import annotations

import torch


def as_dtype(t: torch.Tensor, dtype: torch.dtype, contiguous: bool = False) -> torch.Tensor:
    """`t` in `dtype` (and contiguous, if asked); `t` itself when it already is. `Tensor.to` returns `t` then too,
    but through a dispatch, and a decode step makes hundreds of these calls."""
    if t.dtype == dtype and (not contiguous or t.is_contiguous()):
        return t
    t = t.to(dtype)
    return t.contiguous() if contiguous else t
