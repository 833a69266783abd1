"""Speculative decoding by prompt lookup or a draft model, verified without changing what the model would have
generated.

Before a step, each running decode that may speculate drafts up to k tokens (`propose_ngram`): the last n tokens
(n from NGRAM_MAX down to NGRAM_MIN) are looked up earlier in the prompt and output, and the tokens that followed the
latest match are the draft. Code edits, summaries with quotes and retrieval answers copy long spans, so a draft is
often right. With `--speculative-method draft` a smaller model with the same vocabulary drafts instead
(`draft.DraftModel`), handing over the distribution q each token was drawn from. The scheduler gives a drafting
decode a k+1-token query (its last token and the draft), which the model computes in one forward pass over the paged
KV cache like a chunked-prefill piece, so one step yields k+1 rows of logits. `verify` keeps the drafts the model
agrees with and adds one token of its own:

- greedy: a draft is kept while it equals the row's argmax; the first argmax that differs (or the one after the last
  draft) follows. These are exactly the tokens decoding one at a time produces.
- sampling: Leviathan et al. (2023, "Fast inference from transformers via speculative decoding"). A lookup's draft
  distribution is a point mass (q = 1 on the drafted token x), so x is kept with probability min(1, p(x) / q(x)) =
  p(x), else the token is drawn from max(0, p - q) renormalised, which is p without x. A draft model's token x was
  drawn from its own distribution q (`draft_probs`): x is kept with probability min(1, p(x) / q(x)), else the token
  is drawn from max(0, p - q). Either way each position's output is distributed as p exactly, p being the request's
  processed distribution (temperature, top-k, top-p); with the draft's real q, x is kept sum(min(p, q)) of the time
  rather than sum(p q). When every draft is kept the last row gives a bonus token.

The scheduler then counts only the kept tokens as computed and gives back the KV blocks past them (`postprocess`).
Speculation is decided per request and per step: a request whose tokens depend on more than each row's logits
(penalties, logit bias, logprobs, grammars: any sampling field outside `NEUTRAL_FIELDS` set away from its default)
never speculates; a request whose drafts keep being rejected pauses drafting (`paying`); and no request does in a
step with more running decodes than `max_batch_size`: a batch already reads the weights once for many tokens, so
there the extra query rows cost more than the accepted tokens save.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from infleet.runtime.engine.sampler import SamplingParams, apply_top_k_top_p
from infleet.runtime.engine.scheduler import ScheduledSequence
from infleet.runtime.engine.sequence import Sequence

if TYPE_CHECKING:
    from infleet.runtime.engine.draft import DraftModel

NGRAM_MAX = 4  # longest tail looked up; longer matches are tried first (fewer false hits)
NGRAM_MIN = 2  # a one-token tail matches almost anywhere and is usually wrong
# A request whose drafts are mostly rejected pauses drafting: its drafts are judged in windows of PROBATION_DRAFTS x k
# drafted tokens, and a window with at most MIN_ACCEPTANCE of them kept pauses it for PAUSE_STEPS decode steps.
# Each rejected token is a query row paid for nothing, so open-ended text whose lookups match by chance does not slow
# down, while an answer that starts in its own words and then quotes its prompt still gets drafts once it quotes.
PROBATION_DRAFTS = 4
MIN_ACCEPTANCE = 0.25
PAUSE_STEPS = 16
# Sampling fields under which a position's distribution is a function of its own logits row (and the request's
# generator), which is what verification recomputes: requests setting any other field do not speculate.
NEUTRAL_FIELDS = frozenset(
    {"max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stop_token_ids", "ignore_eos"}
)


def eligible(params: SamplingParams) -> bool:
    """True when `verify` reproduces this request's sampling exactly (see NEUTRAL_FIELDS)."""
    for f in dataclasses.fields(params):
        if f.name in NEUTRAL_FIELDS:
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if getattr(params, f.name) != default:
            return False
    return True


def propose_ngram(tokens: list[int], k: int, n_max: int = NGRAM_MAX, n_min: int = NGRAM_MIN) -> list[int]:
    """Up to `k` tokens that followed the latest earlier occurrence of the longest matching tail (n_max..n_min)."""
    size = len(tokens)
    if k < 1 or size <= n_min:
        return []
    arr = np.asarray(tokens, dtype=np.int64)
    for n in range(min(n_max, size - 1), n_min - 1, -1):
        windows = np.lib.stride_tricks.sliding_window_view(arr[: size - 1], n)  # starts 0..size-1-n: a token follows
        hits = np.flatnonzero((windows == arr[size - n :]).all(axis=1))
        if hits.size:
            start = int(hits[-1]) + n
            return tokens[start : start + k]
    return []


def processed_probs(logits: Tensor, params: SamplingParams) -> Tensor:
    """The distribution `sample` draws from for these rows (`[rows, vocab]`): temperature, then top-k and top-p."""
    rows = logits / params.temperature
    if params.top_k > 0 or params.top_p < 1.0:
        n = rows.shape[0]
        top_k = torch.full((n,), max(params.top_k, 0), device=rows.device)
        top_p = torch.full((n,), params.top_p, dtype=rows.dtype, device=rows.device)
        rows = apply_top_k_top_p(rows, top_k, top_p)
    return rows.softmax(dim=-1)


def verify(
    logits: Tensor,
    draft: list[int],
    params: SamplingParams,
    generator: torch.Generator | None,
    draft_probs: Tensor | None = None,
) -> list[int]:
    """The tokens to append (the kept drafts and one more) from the `[len(draft) + 1, vocab]` logits of one query.
    `draft_probs` (`[len(draft), vocab]`) is the distribution each draft was drawn from; None: a point mass."""
    if params.greedy:
        best = logits.argmax(dim=-1).tolist()
        kept = 0
        while kept < len(draft) and draft[kept] == best[kept]:
            kept += 1
        return [*draft[:kept], int(best[kept])]
    probs = processed_probs(logits, params)
    accept = torch.rand(len(draft), generator=generator, device=probs.device).tolist()
    rows, ids = torch.arange(len(draft), device=probs.device), torch.tensor(draft, device=probs.device)
    p_draft = probs[rows, ids].tolist()
    q_draft = [1.0] * len(draft) if draft_probs is None else draft_probs[rows, ids].tolist()
    for i, x in enumerate(draft):
        if accept[i] * q_draft[i] < p_draft[i]:  # u < p(x) / q(x)
            continue
        if draft_probs is None:
            residual = probs[i].clone()
            residual[x] = 0.0  # max(0, p - q) with q the point mass on x
        else:
            residual = (probs[i] - draft_probs[i]).clamp_min(0.0)
            if not residual.sum() > 0:  # p <= q everywhere only when p == q up to rounding: nothing to add
                residual = probs[i]
        token = int(torch.multinomial(residual, 1, generator=generator)[0])
        return [*draft[:i], token]
    return [*draft, int(torch.multinomial(probs[len(draft)], 1, generator=generator)[0])]


@dataclass
class SpeculativeStats:
    """Counts since the engine started (vLLM's spec_decode counters): a draft is one step's proposal for one request."""

    drafts: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0
    emitted_tokens: int = 0  # tokens appended by speculating decodes: the kept drafts plus one each

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Tokens a speculating decode emits per step (1 = no draft kept)."""
        return self.emitted_tokens / self.drafts if self.drafts else 0.0


# (prompt and output so far, at most k) -> the draft; any proposer that does not look at the target model's
# distribution keeps verification exact (a draft model also hands over its own distribution q: `DraftModel`)
Proposer = Callable[[list[int], int], list[int]]


class Speculator:
    """Drafts before the scheduler runs (into `Sequence.draft_ids`) and verifies after the forward pass."""

    def __init__(
        self,
        num_tokens: int,
        max_batch_size: int,
        max_model_len: int,
        proposer: Proposer = propose_ngram,
        draft_model: DraftModel | None = None,
    ) -> None:
        self.num_tokens = num_tokens
        self.max_batch_size = max_batch_size
        self.max_model_len = max_model_len
        self.proposer = proposer
        self.draft_model = draft_model  # when set, it drafts instead of `proposer`
        self.stats = SpeculativeStats()

    def propose(self, running: list[Sequence]) -> None:
        """Set each running sequence's draft for this step (empty for those that do not speculate now)."""
        decodes = [s for s in running if s.num_uncomputed_tokens == 1]
        on = len(decodes) <= self.max_batch_size
        for seq in running:
            seq.draft_ids, seq.draft_probs = [], None
        if self.draft_model is not None:
            self.draft_model.release(running)
        if not on:
            return
        wanted: list[tuple[Sequence, int]] = []
        for seq in decodes:
            if not eligible(seq.params) or not self.paying(seq):
                continue
            # the kept drafts plus one must fit in max_tokens and the context (positions up to max_model_len - 1)
            room = min(seq.params.max_tokens - seq.num_output_tokens, self.max_model_len - seq.num_tokens) - 1
            if room > 0:
                wanted.append((seq, min(self.num_tokens, room)))
        if self.draft_model is not None:
            self.draft_model.propose(wanted)
            return
        for seq, k in wanted:
            seq.draft_ids = self.proposer(seq.token_ids, k)[:k]

    def paying(self, seq: Sequence) -> bool:
        """False while the request is paused because its last window of drafts was mostly rejected."""
        if seq.draft_pause > 0:
            seq.draft_pause -= 1
            return False
        if seq.drafted_tokens >= PROBATION_DRAFTS * self.num_tokens:  # a window is complete: judge it, start anew
            failing = seq.accepted_tokens <= MIN_ACCEPTANCE * seq.drafted_tokens
            seq.drafted_tokens = seq.accepted_tokens = 0
            if failing:
                seq.draft_pause = PAUSE_STEPS - 1
                return False
        return True

    def verify(self, samplers: list[ScheduledSequence], logits: Tensor) -> tuple[dict[int, list[int]], Tensor]:
        """The speculating samplers' new tokens (the kept drafts and one more), by sampler index, and one logits row
        per sampler (its last), from which the engine samples the others as it does without speculation."""
        sizes = [1 + len(e.seq.draft_ids) for e in samplers]
        starts = np.cumsum([0, *sizes[:-1]]).tolist()
        out: dict[int, list[int]] = {}
        for i, entry in enumerate(samplers):
            draft = entry.seq.draft_ids
            if not draft:
                continue
            rows, seq = logits[starts[i] : starts[i] + sizes[i]], entry.seq
            q = {} if seq.draft_probs is None else {"draft_probs": seq.draft_probs}
            out[i] = verify(rows, draft, seq.params, seq.generator, **q)
            entry.seq.drafted_tokens += len(draft)
            entry.seq.accepted_tokens += len(out[i]) - 1
            self.stats.drafts += 1
            self.stats.draft_tokens += len(draft)
            self.stats.accepted_tokens += len(out[i]) - 1
            self.stats.emitted_tokens += len(out[i])
        return out, logits[[s + n - 1 for s, n in zip(starts, sizes, strict=True)]]
