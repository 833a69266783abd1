"""Constrained decoding with xgrammar: a grammar per request, a token mask per step, the matcher advanced per token.

Why xgrammar: of the three well-kept engines that install from PyPI on a CPU-only machine (xgrammar, llguidance,
outlines-core) it cost the least per step with SmolLM2's 49,152-token vocabulary (docs/structured-output.md).

The engine calls three things: `Grammars.compile` (the server, off the event loop, once per request),
`Grammars.start` before the forward pass (the masks of the step's constrained sequences are filled on a worker
thread while the model computes), and `Grammars.apply` on the logits before sampling. Each sequence's matcher
advances in `Sequence.append_token`, so every path that commits a token keeps it in step.
"""

from __future__ import annotations

import json
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
import xgrammar as xgr
from torch import Tensor

if TYPE_CHECKING:
    from infleet.runtime.engine.sequence import Sequence
    from infleet.runtime.tokenizer import Tokenizer

Kind = Literal["json_object", "json_schema"]


@dataclass(frozen=True)
class GrammarSpec:
    """What a request's output must be: any JSON object, or JSON valid against `schema`."""

    kind: Kind
    schema: dict[str, Any] | None = None

    def key(self) -> str:
        return json.dumps([self.kind, self.schema], sort_keys=True)


class GrammarError(ValueError):
    """A schema the grammar engine cannot compile; the message says why (the server answers 400)."""


class Matcher:
    """One sequence's position in its grammar."""

    def __init__(self, compiled: xgr.CompiledGrammar) -> None:
        self._m = xgr.GrammarMatcher(compiled)

    def accept(self, token: int) -> None:
        """Advance by a sampled token; the mask made any other token impossible, so a refusal is a bug."""
        if not self._m.is_terminated() and not self._m.accept_token(token):
            raise RuntimeError(f"token {token} was sampled against the grammar's mask")

    def fill(self, bitmask: Tensor, row: int) -> None:
        self._m.fill_next_token_bitmask(bitmask, row)

    @property
    def terminated(self) -> bool:
        return bool(self._m.is_terminated())


def encoded_vocab(tokenizer: Tokenizer) -> list[str]:
    """Each id's byte-level BPE string; special tokens (chat markers, EOS) as "", never allowed as text."""
    hf = tokenizer.hf
    special = {i for i, t in hf.get_added_tokens_decoder().items() if t.special}
    return ["" if i in special else (hf.id_to_token(i) or "") for i in range(tokenizer.vocab_size)]


def printable_mask(tokenizer: Tokenizer, vocab_size: int) -> Tensor:
    """A bitmask row allowing the tokens free of raw control characters (bytes below 0x20).

    xgrammar's JSON strings admit raw control characters, which JSON forbids (they must be escaped); every grammar
    here is compact JSON (no whitespace but the separators' spaces), so no such byte is ever valid output.
    """
    texts = tokenizer.hf.decode_batch([[i] for i in range(tokenizer.vocab_size)], skip_special_tokens=False)
    allowed = torch.zeros(vocab_size, dtype=torch.bool)
    allowed[: len(texts)] = torch.tensor([not any(ord(c) < 0x20 for c in t) for t in texts])
    padded = torch.zeros(-(-vocab_size // 32) * 32, dtype=torch.int64)
    padded[:vocab_size] = allowed.long()
    words = (padded.view(-1, 32) << torch.arange(32)).sum(dim=1)  # bit j of word w is token 32*w + j
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


class Grammars:
    """The grammar engine for one model: its vocabulary, a compiler with a cache, and the mask buffers."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, stop_token_ids: list[int], overlap: bool = True) -> None:
        info = xgr.TokenizerInfo(
            encoded_vocab(tokenizer), xgr.VocabType.BYTE_LEVEL, vocab_size=vocab_size, stop_token_ids=stop_token_ids
        )
        self.vocab_size = vocab_size
        self._printable = printable_mask(tokenizer, vocab_size)
        self._compiler = xgr.GrammarCompiler(info, max_threads=1)
        self.overlap = overlap  # fill masks while the forward runs (off: in line, before it)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="infleet-grammar")

    def compile(self, spec: GrammarSpec) -> xgr.CompiledGrammar:
        """Compile (cached by xgrammar); a schema it cannot handle is a GrammarError naming the problem."""
        try:
            if spec.kind == "json_object":
                return self._compiler.compile_json_schema({"type": "object"}, any_whitespace=False)
            assert spec.schema is not None
            return self._compiler.compile_json_schema(spec.schema, any_whitespace=False, strict_mode=True)
        except (RuntimeError, ValueError, TypeError) as e:
            raise GrammarError(f"the JSON schema cannot be used for constrained decoding: {e}") from None

    # --- the step ---------------------------------------------------------------------------------------------------
    def start(self, seqs: list[Sequence]) -> Future[dict[Sequence, Tensor]] | dict[Sequence, Tensor]:
        """Masks for the constrained ones among `seqs` (which sample this step), filled on the worker thread."""
        constrained = [s for s in seqs if s.matcher is not None]
        if not constrained:
            return {}
        if not self.overlap:
            return self._fill(constrained)
        return self._pool.submit(self._fill, constrained)

    def _fill(self, seqs: list[Sequence]) -> dict[Sequence, Tensor]:
        bitmask = xgr.allocate_token_bitmask(len(seqs), self.vocab_size)
        for row, seq in enumerate(seqs):
            assert seq.matcher is not None
            seq.matcher.fill(bitmask, row)
        bitmask &= self._printable
        return {seq: bitmask[row] for row, seq in enumerate(seqs)}

    def apply(self, pending: Future[dict[Sequence, Tensor]] | dict[Sequence, Tensor], logits: Tensor,
              seqs: list[Sequence]) -> None:  # fmt: skip
        """Set every token the grammar forbids to -inf, in place; `seqs` are `logits`' rows in order."""
        masks = pending.result() if isinstance(pending, Future) else pending
        if not masks:
            return
        full = torch.full((len(seqs), masks[next(iter(masks))].shape[0]), -1, dtype=torch.int32)  # -1: all allowed
        for row, seq in enumerate(seqs):
            if seq in masks:
                full[row] = masks[seq]
        xgr.apply_token_bitmask_inplace(logits, full.to(logits.device), vocab_size=self.vocab_size)
