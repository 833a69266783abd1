"""Speculative decoding's settings as the CRD and the runtime's flags both name them (`spec.runtime.speculative`,
`--speculative-*`): the methods and the bounds on the number of drafted tokens."""

from __future__ import annotations

from typing import Literal, get_args

Method = Literal["ngram", "draft"]
METHODS: tuple[Method, ...] = get_args(Method)
# Tokens drafted per step: beyond 8 a CPU's verification pass costs more than the few extra accepted tokens
# save, and prompt lookup rarely matches that far; the CRD and the runtime refuse more.
MIN_NUM_TOKENS = 1
MAX_NUM_TOKENS = 8
DEFAULT_NUM_TOKENS = 4
