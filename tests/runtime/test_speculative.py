"""Speculative decoding changes no output: greedy tokens are identical with it on and off (every tier), sampled tokens
follow the same distribution (chi-square), rejected drafts give their KV blocks back, and speculating and plain
sequences share steps with prefills. The tiny model does not copy its prompt, so most tests draft from a reference
run with errors mixed in (an `oracle`): what is checked is verification, which must keep right drafts, reject wrong
ones and leave the output unchanged either way; the prompt-lookup drafter runs on the real SmolLM2 at the end."""

from __future__ import annotations

import copy
import dataclasses
import random
import re
from typing import Any

import pytest
import torch

from infleet.runtime.config import EngineConfig
from infleet.runtime.engine import speculative
from infleet.runtime.engine.engine import LLMEngine, apply_tier
from infleet.runtime.engine.sampler import SamplingParams
from infleet.runtime.engine.speculative import Proposer, eligible, propose_ngram

K = 4
VOCAB = 512  # the vocabulary of tiny_llama_512


@pytest.fixture(scope="module")
def tiny(tiny_llama_512: Any) -> tuple[Any, Any, Any]:
    return tiny_llama_512  # type: ignore[no-any-return]


def oracle(references: list[list[int]], error_rate: float, seed: int = 0) -> Proposer:
    """Drafts the reference continuation of whichever reference `tokens` is a prefix of, each token wrong (shifted)
    with probability `error_rate`; nothing for a sequence that left every reference."""
    rng = random.Random(seed)
    following = {tuple(ref[:j]): ref[j:] for ref in references for j in range(1, len(ref))}

    def propose(tokens: list[int], k: int) -> list[int]:
        return [t if rng.random() >= error_rate else (t + 1) % VOCAB for t in following.get(tuple(tokens), [])[:k]]

    return propose


def engine(model: Any, config: Any, tokenizer: Any, spec: bool, **kwargs: Any) -> LLMEngine:
    kwargs.setdefault("max_model_len", 512)
    kwargs.setdefault("num_kv_blocks", 1000)
    kwargs.setdefault("max_num_seqs", 128)
    if spec:
        kwargs.update(speculative_method="ngram", speculative_num_tokens=K, speculative_max_batch_size=128)
    return LLMEngine(model, config, tokenizer, EngineConfig(**kwargs))


NEAR_TIE = 0.1  # nats between the two most likely tokens (a divergence seen on one CPU: 0.042)


def top_two_gap(llm: LLMEngine, tokens: list[int]) -> float:
    """How far apart (log-probability) the two most likely next tokens after `tokens` are, from a fresh prefill."""
    llm.add_request("gap", tokens, SamplingParams(max_tokens=1, temperature=0.0, logprobs=2))
    outputs = []
    while llm.has_unfinished():
        outputs += llm.step()
    (first, second), *_ = [o.new_logprobs[0].top[:2] for o in outputs if o.new_logprobs]
    return first[1] - second[1]


def random_prompts(n: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, VOCAB) for _ in range(rng.randint(4, 40))] for _ in range(n)]


# --- the drafter and the per-request decision ----------------------------------------------------------------------
def test_prompt_lookup_drafts_what_followed_the_latest_longest_match() -> None:
    tokens = [1, 2, 3, 9, 9, 5, 1, 2, 3, 7, 8, 6, 1, 2, 3]
    assert propose_ngram(tokens, 2) == [7, 8]  # the latest occurrence of [1, 2, 3]
    assert propose_ngram([5, 6, 7, 8, 5, 6], 3) == [7, 8, 5]
    assert propose_ngram([4, 6, 0, 3, 1, 6], 3) == []  # a one-token tail (6) is not enough
    assert propose_ngram([1, 2, 1, 2], 5) == [1, 2]  # only what exists
    assert propose_ngram([1, 2], 4) == [] and propose_ngram([1, 2, 3, 1, 2], 0) == []


def test_requests_whose_sampling_needs_more_than_the_logits_row_do_not_speculate() -> None:
    @dataclasses.dataclass
    class WithPenalty(SamplingParams):  # what a penalty or logit-bias field looks like to the speculator
        presence_penalty: float = 0.0

    assert eligible(SamplingParams(temperature=0.7, top_k=5, top_p=0.9, seed=3, stop=["x"]))
    assert eligible(WithPenalty())
    assert not eligible(WithPenalty(presence_penalty=0.5))


# --- settings: flags and EngineConfig refuse what cannot run, naming the flag ------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            dict(speculative_method="ngram", speculative_num_tokens=0),
            "--speculative-num-tokens must be between 1 and 8",
        ),
        (
            dict(speculative_method="ngram", speculative_num_tokens=9),
            "--speculative-num-tokens must be between 1 and 8",
        ),
        (dict(speculative_method="medusa"), "--speculative-method must be one of ngram, draft"),
        (dict(speculative_method="draft"), "--speculative-draft-model is required with --speculative-method draft"),
        (dict(speculative_method="ngram", speculative_draft_model="/m"), "--speculative-draft-model is only used"),
        (dict(speculative_method="ngram", tensor_parallel=2), "not supported with --tensor-parallel"),
        (dict(speculative_method="ngram", speculative_max_batch_size=0), "--speculative-max-batch-size must be at"),
    ],
)
def test_bad_speculative_settings_are_refused_naming_the_flag(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        EngineConfig(**kwargs)


def test_speculative_flags_reach_the_engine_config(capsys: pytest.CaptureFixture[str]) -> None:
    from infleet.runtime.__main__ import engine_config, main, parser

    args = ["serve", "--model", "/nowhere.gguf", "--speculative-method", "ngram", "--speculative-num-tokens", "3"]
    cfg = engine_config(parser().parse_args([*args, "--speculative-max-batch-size", "2", "--device", "cpu"]))
    assert (cfg.speculative_method, cfg.speculative_num_tokens, cfg.speculative_max_batch_size) == ("ngram", 3, 2)
    draft = ["serve", "--model", "/m.gguf", "--speculative-method", "draft", "--speculative-draft-model", "/d.gguf"]
    cfg = engine_config(parser().parse_args([*draft, "--device", "cpu"]))
    assert (cfg.speculative_method, cfg.speculative_draft_model) == ("draft", "/d.gguf")
    assert main([*args[:-1], "12"]) == 2  # refused before anything loads
    assert "--speculative-num-tokens must be between 1 and 8, got 12" in capsys.readouterr().err


# --- greedy: identical outputs, every tier -------------------------------------------------------------------------
@pytest.mark.parametrize("tier", ["bf16", "fp8", "int8", "int4"])
def test_greedy_outputs_are_identical_with_speculation_on_and_off(tiny: Any, tier: str) -> None:
    """100 prompts in one batch; drafts are a reference continuation with 30% of tokens wrong."""
    model, config, tokenizer = tiny
    model = apply_tier(copy.deepcopy(model), tier)
    if tier == "bf16":
        model = model.to(torch.bfloat16)  # how the runtime computes the bf16 tier on a CPU
    prompts = random_prompts(100, seed=1)
    greedy = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    off = engine(model, config, tokenizer, spec=False).generate(prompts, greedy)
    on_engine = engine(model, config, tokenizer, spec=True)
    assert on_engine.speculator is not None
    on_engine.speculator.proposer = oracle([p + o for p, o in zip(prompts, off, strict=True)], error_rate=0.3)
    on = on_engine.generate(prompts, greedy)
    # Exact but at a near-tie: where the CPU rounds activations to bf16 (the bf16 tier, the int8/int4 kernels), a
    # k+1-row verify can round differently from a one-row decode (docs/runtime.md). A verifier that kept a wrong draft
    # or dropped a right one would diverge where the choice is clear-cut.
    diverged = [(p, a, b) for p, a, b in zip(prompts, on, off, strict=True) if a != b]
    assert len(diverged) <= 2, f"{len(diverged)} of {len(prompts)} outputs differ"
    for prompt, a, b in diverged:
        first = next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
        gap = top_two_gap(engine(model, config, tokenizer, spec=False), prompt + b[:first])
        assert gap < NEAR_TIE, f"outputs differ at token {first}, where the top two are {gap:.3f} nats apart"
    stats = on_engine.speculator.stats
    assert 0 < stats.accepted_tokens < stats.draft_tokens  # right drafts were kept and wrong ones rejected
    assert stats.emitted_tokens == stats.drafts + stats.accepted_tokens
    assert on_engine.stats().kv_cache_usage == 0.0  # every block came back


def test_metrics_count_drafted_accepted_and_emitted_tokens(tiny: Any) -> None:
    from infleet.api import metrics as names
    from infleet.runtime.metrics import RuntimeMetrics

    model, config, tokenizer = tiny
    prompts = random_prompts(8, seed=6)
    greedy = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    off = engine(model, config, tokenizer, spec=False).generate(prompts, greedy)
    metrics = RuntimeMetrics("tiny", "bf16")
    eng = LLMEngine(
        model,
        config,
        tokenizer,
        EngineConfig(max_model_len=512, num_kv_blocks=200, speculative_method="ngram", speculative_max_batch_size=8),
        metrics=metrics,
    )
    assert eng.speculator is not None
    eng.speculator.proposer = oracle([p + o for p, o in zip(prompts, off, strict=True)], error_rate=0.3)
    eng.generate(prompts, greedy)
    text = metrics.render().decode()
    stats = eng.speculator.stats

    def value(name: str) -> float:
        found = re.search(rf"^{name}{{[^}}]*}} (\S+)$", text, re.M)
        assert found, name
        return float(found.group(1))

    assert value(names.SPEC_DRAFTS) == stats.drafts > 0
    assert value(names.SPEC_DRAFT_TOKENS) == stats.draft_tokens
    assert value(names.SPEC_ACCEPTED_TOKENS) == stats.accepted_tokens > 0
    assert value(names.SPEC_EMITTED_TOKENS) == stats.emitted_tokens
    assert value(names.SPEC_ACCEPTANCE_RATE) == pytest.approx(stats.accepted_tokens / stats.draft_tokens)
    assert value(names.SPEC_MEAN_ACCEPTED_LENGTH) == pytest.approx(stats.emitted_tokens / stats.drafts)


def test_rejected_drafts_give_their_kv_blocks_back(tiny: Any) -> None:
    model, config, tokenizer = tiny
    eng = engine(model, config, tokenizer, spec=True, prefix_caching=False)
    assert eng.speculator is not None
    eng.speculator.proposer = lambda tokens, k: [5] * k  # drafts the model does not follow
    eng.add_request("a", list(range(10, 24)), SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))
    eng.step()  # prefill: 14 tokens in one block, the first token sampled
    seq = eng.requests["a"]
    drafted = []
    for _ in range(3):  # a query of 1 + 4 tokens from position 14 onwards needs a second block every time
        eng.speculator.propose(eng.scheduler.running)
        drafted.append(list(seq.draft_ids))
        eng.speculator.propose = lambda running: None  # type: ignore[method-assign]  # keep this draft for the step
        eng.step()
        del eng.speculator.propose
        assert seq.num_computed_tokens == seq.num_tokens - 1
        assert len(seq.block_table) == -(-seq.num_computed_tokens // 16)
        assert eng.block_manager.num_free_blocks == eng.block_manager.num_blocks - len(seq.block_table)
    assert all(d == [5] * K for d in drafted)
    assert eng.speculator.stats.draft_tokens == 3 * K


# --- continuous batching: speculating and plain decodes beside a prefill -------------------------------------------
def test_a_step_mixes_speculating_and_plain_decodes_with_a_prefill(tiny: Any) -> None:
    @dataclasses.dataclass
    class WithPenalty(SamplingParams):
        presence_penalty: float = 0.0

    model, config, tokenizer = tiny
    prompts = random_prompts(3, seed=2)
    params = [
        SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True),
        WithPenalty(max_tokens=12, temperature=0.0, ignore_eos=True, presence_penalty=0.5),  # never speculates
        SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True),
    ]
    alone = [engine(model, config, tokenizer, spec=False).generate([p], params[0])[0] for p in prompts]
    eng = engine(model, config, tokenizer, spec=True)
    assert eng.speculator is not None
    eng.speculator.proposer = oracle([p + o for p, o in zip(prompts, alone, strict=True)], error_rate=0.2)
    steps: list[list[tuple[str, int, int]]] = []
    run = eng.runner.run

    def recording(batch: Any) -> Any:
        steps.append([(e.seq.request_id, e.num_tokens, len(e.seq.draft_ids)) for e in batch])
        return run(batch)

    eng.runner.run = recording  # type: ignore[method-assign]
    out: dict[str, list[int]] = {"0": [], "1": [], "2": []}
    eng.add_request("0", prompts[0], params[0])
    eng.add_request("1", prompts[1], params[1])
    for o in eng.step():  # both prefills
        out[o.request_id] += o.new_token_ids
    eng.add_request("2", prompts[2], params[2])  # its prefill joins the two decodes
    while eng.has_unfinished():
        for o in eng.step():
            out[o.request_id] += o.new_token_ids
    mixed = steps[1]
    kinds = {rid: (n, d) for rid, n, d in mixed}
    assert kinds["0"] == (1 + K, K)  # a speculating decode
    assert kinds["1"] == (1, 0)  # a plain decode (its params opt it out)
    assert kinds["2"] == (len(prompts[2]), 0)  # a prefill
    assert [out["0"], out["1"], out["2"]] == alone
    assert all(d == 0 for step in steps for rid, _, d in step if rid == "1")


def test_no_drafts_above_the_batch_size_where_speculation_stops_paying(tiny: Any) -> None:
    model, config, tokenizer = tiny
    prompts = random_prompts(6, seed=3)
    greedy = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    off = engine(model, config, tokenizer, spec=False).generate(prompts, greedy)
    eng = engine(model, config, tokenizer, spec=True)
    assert eng.speculator is not None
    eng.speculator.max_batch_size = 5
    eng.speculator.proposer = oracle([p + o for p, o in zip(prompts, off, strict=True)], error_rate=0.0)
    assert eng.generate(prompts, greedy) == off
    assert eng.speculator.stats.drafts == 0
    assert eng.generate(prompts[:5], greedy) == off[:5]
    assert eng.speculator.stats.drafts > 0


def test_a_request_whose_drafts_keep_failing_pauses_drafting(tiny: Any) -> None:
    model, config, tokenizer = tiny
    eng = engine(model, config, tokenizer, spec=True)
    assert eng.speculator is not None
    eng.speculator.proposer = lambda tokens, k: [5] * k  # tokens the tiny model does not choose
    window = speculative.PROBATION_DRAFTS
    steps = 2 * window + speculative.PAUSE_STEPS  # a window, a pause, a second window
    eng.generate(random_prompts(1, seed=4), SamplingParams(max_tokens=steps + 2, temperature=0.0, ignore_eos=True))
    assert eng.speculator.stats.drafts == 2 * window


# --- sampling: the same distribution --------------------------------------------------------------------------------
def chi_square_p(a: list[tuple[int, ...]], b: list[tuple[int, ...]]) -> float:
    """p-value of the chi-square test that two samples come from one distribution (categories expected fewer than
    5 times in either sample are pooled)."""
    counts: dict[tuple[int, ...], list[int]] = {}
    for i, sample in enumerate((a, b)):
        for x in sample:
            counts.setdefault(x, [0, 0])[i] += 1
    na, nb = len(a), len(b)
    table, pooled = [], [0, 0]
    for ca, cb in counts.values():
        if (ca + cb) * min(na, nb) / (na + nb) < 5:
            pooled = [pooled[0] + ca, pooled[1] + cb]
        else:
            table.append((ca, cb))
    if sum(pooled):
        table.append((pooled[0], pooled[1]))
    stat = 0.0
    for ca, cb in table:
        total = ca + cb
        for observed, n in ((ca, na), (cb, nb)):
            expected = total * n / (na + nb)
            stat += (observed - expected) ** 2 / expected
    df = len(table) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2), torch.tensor(stat / 2)))


SAMPLES = 600


def sampled(tiny: Any, spec: bool, seed0: int, monkeypatch: pytest.MonkeyPatch | None = None) -> Any:
    model, config, tokenizer = tiny
    prompt = random_prompts(1, seed=5)[0]
    greedy = engine(model, config, tokenizer, spec=False).generate(
        [prompt], SamplingParams(max_tokens=4, temperature=0)
    )
    eng = engine(model, config, tokenizer, spec=spec, max_num_seqs=64)
    if eng.speculator is not None:
        eng.speculator.proposer = oracle([prompt + greedy[0]], error_rate=0.0)  # the greedy path: right most times
    params = [
        SamplingParams(max_tokens=4, temperature=0.8, top_k=6, seed=seed0 + i, ignore_eos=True) for i in range(SAMPLES)
    ]
    return [tuple(o) for o in eng.generate([prompt] * SAMPLES, params)], eng


def test_sampled_tokens_follow_the_same_distribution_with_speculation(tiny: Any) -> None:
    off, _ = sampled(tiny, spec=False, seed0=0)
    on, eng = sampled(tiny, spec=True, seed0=10**6)  # independent draws
    stats = eng.speculator.stats
    assert 0 < stats.accepted_tokens < stats.draft_tokens and stats.drafts > SAMPLES // 2
    assert len(set(off)) > 10  # a real distribution, not a single path
    assert chi_square_p(off, on) > 0.001


def test_the_chi_square_test_detects_a_verifier_that_keeps_every_draft(
    tiny: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def keep_all(logits: torch.Tensor, draft: list[int], params: SamplingParams, generator: Any) -> list[int]:
        probs = speculative.processed_probs(logits[-1:], params)
        return [*draft, int(torch.multinomial(probs[0], 1, generator=generator)[0])]

    off, _ = sampled(tiny, spec=False, seed0=0)
    monkeypatch.setattr(speculative, "verify", keep_all)
    biased, _ = sampled(tiny, spec=True, seed0=10**6)
    assert chi_square_p(off, biased) < 0.001


# --- the real model and the prompt-lookup drafter -------------------------------------------------------------------
@pytest.mark.model
def test_prompt_lookup_on_smollm2_saves_steps_and_changes_no_token(smollm2: Any) -> None:
    model, config, tokenizer = smollm2
    code = (
        "def total(values):\n    result = 0\n    for value in values:\n        result += value * 2\n    return result\n"
    )
    chat = [{"role": "user", "content": f"Rename `result` to `acc` and print the whole function:\n\n{code}"}]
    prompt = tokenizer.encode(tokenizer.apply_chat_template(chat), add_special_tokens=False)
    greedy = SamplingParams(max_tokens=48, temperature=0.0, ignore_eos=True)
    counts = {}
    outs = {}
    for spec in (False, True):
        eng = engine(model, config, tokenizer, spec=spec, max_model_len=1024)
        eng.add_request("r", prompt, greedy)
        outs[spec], counts[spec] = [], 0
        while eng.has_unfinished():
            counts[spec] += 1
            for o in eng.step():
                outs[spec] += o.new_token_ids
        if spec:
            assert eng.speculator is not None
            stats = eng.speculator.stats
    assert outs[True] == outs[False]
    assert stats.accepted_tokens > 0
    assert counts[True] <= counts[False] - stats.accepted_tokens  # a step saved per kept draft token


# --- a draft model: same outputs, same distribution, its own KV cache rolled back -----------------------------------
def first_layer_of(model: Any, config: Any) -> tuple[Any, Any]:
    """A one-layer draft that shares the target's embeddings, first layer and norm: its guesses are often right."""
    from infleet.runtime.model.llama import LlamaForCausalLM

    small = dataclasses.replace(config, num_hidden_layers=1, name="tiny-draft")
    draft = LlamaForCausalLM(small)
    draft.load_state_dict(model.state_dict(), strict=False)  # layers.1 has nowhere to go
    return draft.eval(), small


def draft_engine(tiny: Any, draft: tuple[Any, Any] | None = None, **kwargs: Any) -> LLMEngine:
    model, config, tokenizer = tiny
    d_model, d_config = draft or first_layer_of(model, config)
    kwargs.setdefault("max_model_len", 512)
    kwargs.setdefault("num_kv_blocks", 1000)
    kwargs.setdefault("max_num_seqs", 128)
    cfg = EngineConfig(
        speculative_method="draft",
        speculative_draft_model="tiny-draft",
        speculative_num_tokens=K,
        speculative_max_batch_size=128,
        **kwargs,
    )
    return LLMEngine(model, config, tokenizer, cfg, draft=(d_model, d_config, tokenizer))


def test_greedy_outputs_are_identical_with_a_draft_model(tiny: Any) -> None:
    """40 prompts in one batch: a one-layer draft is right part of the time; verification keeps exactly those."""
    model, config, tokenizer = tiny
    prompts = random_prompts(40, seed=7)
    greedy = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    off = engine(model, config, tokenizer, spec=False).generate(prompts, greedy)
    eng = draft_engine(tiny)
    assert eng.generate(prompts, greedy) == off
    stats = eng.speculator.stats  # type: ignore[union-attr]
    assert 0 < stats.accepted_tokens < stats.draft_tokens
    assert eng.stats().kv_cache_usage == 0.0
    drafter = eng.speculator.draft_model  # type: ignore[union-attr]
    assert drafter is not None
    eng.speculator.propose([])  # type: ignore[union-attr]  # no sequence runs: every draft block comes back
    assert drafter.num_free_blocks == drafter.num_blocks


def test_the_target_as_its_own_draft_is_always_right(tiny: Any) -> None:
    model, config, tokenizer = tiny
    prompts = random_prompts(8, seed=8)
    greedy = SamplingParams(max_tokens=14, temperature=0.0, ignore_eos=True)
    off = engine(model, config, tokenizer, spec=False).generate(prompts, greedy)
    eng = draft_engine(tiny, draft=(model, config))
    assert eng.generate(prompts, greedy) == off
    stats = eng.speculator.stats  # type: ignore[union-attr]
    assert stats.draft_tokens > 0 and stats.accepted_tokens == stats.draft_tokens


def test_a_draft_model_with_another_vocabulary_is_refused(tiny: Any) -> None:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import WordLevel

    from infleet.runtime.tokenizer import Tokenizer

    model, config, tokenizer = tiny
    other = dataclasses.replace(config, vocab_size=256)
    with pytest.raises(ValueError, match="its vocabulary has 256 entries, the model's 512"):
        draft_engine(tiny, draft=(random_llama_like(other), other))
    words = Tokenizer(
        HFTokenizer(WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>")),
        chat_template=None,
        bos_token=None,
        eos_token_ids=[0],
    )
    cfg = EngineConfig(max_model_len=512, num_kv_blocks=100, speculative_method="draft", speculative_draft_model="x")
    with pytest.raises(ValueError, match="tokenizer maps tokens to different ids"):
        LLMEngine(model, config, tokenizer, cfg, draft=(model, config, words))


def random_llama_like(config: Any) -> Any:
    from infleet.runtime.model.llama import LlamaForCausalLM

    return LlamaForCausalLM(config).eval()


def sampled_with_draft(tiny: Any, seed0: int) -> Any:
    eng = draft_engine(tiny, max_num_seqs=64)
    prompt = random_prompts(1, seed=5)[0]
    params = [
        SamplingParams(max_tokens=4, temperature=0.8, top_k=6, seed=seed0 + i, ignore_eos=True) for i in range(SAMPLES)
    ]
    return [tuple(o) for o in eng.generate([prompt] * SAMPLES, params)], eng


def test_sampled_tokens_follow_the_same_distribution_with_a_draft_model(tiny: Any) -> None:
    off, _ = sampled(tiny, spec=False, seed0=0)
    on, eng = sampled_with_draft(tiny, seed0=10**6)
    stats = eng.speculator.stats
    assert 0 < stats.accepted_tokens < stats.draft_tokens and stats.drafts > SAMPLES // 2
    assert chi_square_p(off, on) > 0.001


def wrong_residual(
    logits: torch.Tensor, draft: list[int], params: SamplingParams, generator: Any, draft_probs: torch.Tensor
) -> list[int]:
    """A broken verifier for the test below: the min(1, p/q) test, but the point mass's residual (p without x)."""
    p = speculative.processed_probs(logits, params)
    x = draft[0]
    if float(torch.rand(1, generator=generator)) * float(draft_probs[0, x]) < float(p[0, x]):
        return [x, int(torch.multinomial(p[1], 1, generator=generator)[0])]
    residual = p[0].clone()
    residual[x] = 0.0
    return [int(torch.multinomial(residual, 1, generator=generator)[0])]


@pytest.mark.parametrize(
    ("verifier", "acceptance"), [("q", 0.5), ("point-mass", 0.175), ("wrong-residual", None)], ids=str
)
def test_verify_with_the_draft_distribution_emits_p_and_accepts_more(verifier: str, acceptance: float | None) -> None:
    """One position, p and q far apart, x drawn from q. Given q, `verify` keeps x with probability min(1, p/q):
    sum(min(p, q)) = 0.5 of the time, where a point mass (kept with p(x)) would keep sum(p q) = 0.175; both emit
    tokens distributed as p (chi-square goodness of fit), and a verifier mixing the two rules does not."""
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    q = torch.tensor([0.1, 0.2, 0.3, 0.4])
    logits = p.log().expand(2, 4)
    params = SamplingParams(temperature=1.0, seed=0)
    generator = torch.Generator().manual_seed(0)
    trials = 4000
    counts = torch.zeros(4)
    kept = 0
    for _ in range(trials):
        x = int(torch.multinomial(q, 1, generator=generator)[0])
        if verifier == "q":
            out = speculative.verify(logits, [x], params, generator, draft_probs=q[None])
        elif verifier == "point-mass":
            out = speculative.verify(logits, [x], params, generator)
        else:
            out = wrong_residual(logits, [x], params, generator, q[None])
        counts[out[0]] += 1
        kept += len(out) == 2
    expected = p * trials
    stat = float(((counts - expected) ** 2 / expected).sum())
    p_value = float(torch.special.gammaincc(torch.tensor(3 / 2), torch.tensor(stat / 2)))
    if acceptance is None:
        assert p_value < 0.001, counts.tolist()
    else:
        assert p_value > 0.001, counts.tolist()
        assert kept / trials == pytest.approx(acceptance, abs=0.03)
