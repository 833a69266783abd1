"""Sampler: greedy, top-k/top-p masks, per-request seeds, parameter validation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infleet.runtime.engine.sampler import SamplingParams, apply_top_k_top_p, process, sample, token_logprobs


def test_greedy_takes_the_argmax() -> None:
    logits = torch.tensor([[0.1, 3.0, 2.0], [5.0, 1.0, 4.0]])
    params = [SamplingParams(temperature=0.0)] * 2
    assert sample(logits, params, [None, None]) == [1, 0]


def test_top_k_keeps_exactly_k() -> None:
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    out = apply_top_k_top_p(logits, torch.tensor([2]), torch.tensor([1.0]))
    assert torch.isfinite(out).tolist() == [[False, True, False, True, False]]
    assert torch.equal(out[torch.isfinite(out)], torch.tensor([5.0, 4.0]))


def test_top_p_keeps_the_smallest_nucleus() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = apply_top_k_top_p(probs.log(), torch.tensor([0]), torch.tensor([0.75]))
    assert torch.isfinite(out).tolist() == [[True, True, False, False]]  # 0.5 < 0.75, 0.8 >= 0.75: stop there
    out = apply_top_k_top_p(probs.log(), torch.tensor([0]), torch.tensor([0.01]))
    assert torch.isfinite(out).tolist() == [[True, False, False, False]]  # the top token always survives


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-20, 20), min_size=2, max_size=40),
    st.integers(0, 50),
    st.floats(0.01, 1.0),
)
def test_top_k_top_p_masks_only_the_tail(values: list[float], k: int, p: float) -> None:
    logits = torch.tensor([values])
    out = apply_top_k_top_p(logits, torch.tensor([k]), torch.tensor([p]))
    kept = torch.isfinite(out[0])
    assert kept.any()
    assert torch.equal(out[0][kept], logits[0][kept])  # survivors are unchanged
    if k:
        assert int(kept.sum()) <= k
    if kept.sum() < len(values):  # everything kept ranks at least as high as everything dropped
        assert logits[0][kept].min() >= logits[0][~kept].max()
    probs = logits[0].softmax(-1)
    assert float(probs[kept].sum()) >= min(p, float(probs.max())) - 1e-5 or (k and int(kept.sum()) == k)


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch() -> None:
    torch.manual_seed(1)
    logits = torch.randn(3, 1000)
    params = SamplingParams(temperature=0.9, top_p=0.95, top_k=50, seed=42)
    alone = [sample(logits[1:2], [params], [params.make_generator()])[0] for _ in range(3)]
    other = SamplingParams(temperature=1.0, seed=7)
    batched = sample(logits, [other, params, other], [other.make_generator(), params.make_generator(), None])[1]
    assert alone == [alone[0]] * 3 and batched == alone[0]
    gen = params.make_generator()
    draws = [sample(logits[1:2], [params], [gen])[0] for _ in range(20)]
    assert len(set(draws)) > 1  # one generator advances: a stream of tokens, not one repeated


def test_temperature_sampling_follows_the_distribution() -> None:
    logits = torch.tensor([[0.0, 1.0]]).repeat(4000, 1)
    params = [SamplingParams(temperature=1.0)] * 4000
    gen = torch.Generator().manual_seed(0)
    draws = sample(logits, params, [gen] * 4000)
    share = sum(draws) / len(draws)
    assert abs(share - torch.tensor([0.0, 1.0]).softmax(-1)[1].item()) < 0.03


@pytest.mark.parametrize(
    ("params", "prompt_len", "message"),
    [
        (SamplingParams(max_tokens=0), 5, "max_tokens: must be an integer >= 1"),
        (SamplingParams(max_tokens=100), 50, "max_tokens: prompt (50 tokens) + max_tokens (100) exceeds"),
        (SamplingParams(), 0, "prompt: must contain at least one token"),
        (SamplingParams(), 128, "prompt: 128 tokens leave no room"),
        (SamplingParams(temperature=-1.0), 5, "temperature: must be between 0 and 100"),
        (SamplingParams(top_p=0.0), 5, "top_p: must be in (0, 1]"),
        (SamplingParams(top_p=1.5), 5, "top_p: must be in (0, 1]"),
        (SamplingParams(top_k=-2), 5, "top_k: must be an integer >= 0"),
        (SamplingParams(seed=-1), 5, "seed: must be an integer"),
        (SamplingParams(stop=[""]), 5, "stop: every stop sequence must be a non-empty string"),
        (SamplingParams(stop_token_ids=[-3]), 5, "stop_token_ids: must be non-negative"),
    ],
)
def test_validate_names_the_field(params: SamplingParams, prompt_len: int, message: str) -> None:
    with pytest.raises(ValueError) as info:
        params.validate(max_model_len=128, prompt_len=prompt_len)
    assert str(info.value).startswith(message)


def test_valid_params_pass() -> None:
    SamplingParams(max_tokens=10, temperature=0.7, top_p=0.9, top_k=-1, seed=3, stop=["\n"]).validate(128, 100)


def test_penalties_bias_and_temperature_by_their_formulas() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0, 1.0]])
    params = SamplingParams(
        temperature=0.5, presence_penalty=0.25, frequency_penalty=0.5, repetition_penalty=2.0, logit_bias={4: -3.0}
    )
    history = ([0, 1, 2, 2, 0], 2)  # prompt [0, 1]; output [2, 2, 0]
    got = process(logits, [params], [history])[0]
    # token 0: seen, positive -> 2/2, once in the output -> -0.5 -0.25; token 1: prompt only, negative -> -1*2;
    # token 2: 0.5/2, twice -> -1.0 -0.25; token 3 untouched; token 4: bias; then / temperature
    expected = torch.tensor([1.0 - 0.75, -2.0, 0.25 - 1.25, 0.0, 1.0 - 3.0]) / 0.5
    assert torch.allclose(got, expected)
    assert process(logits, [SamplingParams(temperature=0.0, repetition_penalty=2.0)], [history])[0][0] == 1.0
    assert process(logits, [SamplingParams()])[0].equal(logits[0])  # nothing asked, nothing changed


def test_logprobs_are_the_log_softmax_with_the_top_tokens() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 2.5, -1.0]])
    found = token_logprobs(logits, [2, 0], [2, 0])
    ref = logits.log_softmax(-1)
    assert found[0].token_id == 2 and found[0].logprob == pytest.approx(float(ref[0, 2]))
    assert [t for t, _ in found[0].top] == [1, 2] and found[0].top[0][1] == pytest.approx(float(ref[0, 1]))
    assert found[1].top == [] and found[1].logprob == pytest.approx(float(ref[1, 0]))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (SamplingParams(n=0), "n: must be an integer between 1 and 128"),
        (SamplingParams(presence_penalty=2.5), "presence_penalty: must be between -2 and 2"),
        (SamplingParams(repetition_penalty=0.0), "repetition_penalty: must be in (0, 2]"),
        (SamplingParams(logit_bias={3: 101.0}), "logit_bias: values must be between -100 and 100"),
        (SamplingParams(logprobs=21), "logprobs: must be an integer between 0 and 20"),
    ],
)
def test_validate_names_the_new_fields(params: SamplingParams, message: str) -> None:
    with pytest.raises(ValueError) as info:
        params.validate(max_model_len=128, prompt_len=5)
    assert str(info.value).startswith(message)
