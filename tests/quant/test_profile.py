"""The committed SmolLM2 CPU tier profile follows the documented schema and is what the autoscaler's chooser reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infleet.autoscaler.tiers import load_profile
from infleet.runtime.config import compute_dtype_name
from infleet.runtime.quant import profile as P
from infleet.runtime.quant.tiers import TIERS

PROFILE = Path(P.__file__).parent / "profiles" / "smollm2-135m-cpu.json"


def test_committed_profile_matches_schema() -> None:
    doc = json.loads(PROFILE.read_text())
    assert doc["schema"] == P.SCHEMA and doc["device"] == "cpu" and doc["baseline"] == "fp32"
    assert set(doc["tiers"]) == set(TIERS)
    base = doc["tiers"]["bf16"]
    # each tier as served on a CPU: bf16 in bf16, the weight-only tiers over float32 activations
    assert {t: e["activation_dtype"] for t, e in doc["tiers"].items()} == {
        t: f"torch.{compute_dtype_name(t, 'cpu')}" for t in TIERS
    }
    reference = base["reference_perplexity"]
    for tier, entry in doc["tiers"].items():
        assert entry["reference_perplexity"] == reference, tier  # one fp32 reference for every tier
        assert entry["perplexity"] > 1 and 0 <= entry["greedy_match_rate"] <= 1, tier
        assert entry["quality_loss"] == pytest.approx(max(entry["perplexity"] / reference - 1, 0), abs=1e-4)
        assert set(entry["decode_tokens_per_second"]) == {str(b) for b in doc["eval"]["batches"]}
        # prefill runs many tokens per step: faster than decoding one sequence at a time
        assert entry["prefill_tokens_per_second"] > entry["decode_tokens_per_second"]["1"], tier
        if tier != "bf16":
            assert entry["memory_bytes"] < base["memory_bytes"]
    assert doc["eval"]["bandwidth_measured"] and doc["eval"]["bandwidth_gbs"] > 0
    # SmolLM2's GGUF is Q4_1: its weights sit on a 4-bit grid in blocks of 32, which int4 groups follow
    assert doc["tiers"]["int4"]["group_size"] == 32 and "4-bit grid" in doc["tiers"]["int4"]["group_size_reason"]


def test_autoscaler_reads_it() -> None:
    options = {o.tier: o for o in load_profile(PROFILE)}
    assert set(options) == set(TIERS)
    assert all(o.gpu == "cpu" and o.capacity_tokens_per_second > 0 for o in options.values())
    assert all(o.prefill_tokens_per_second for o in options.values())  # so the capacity follows the request mix


def test_prefix_match() -> None:
    assert P.prefix_match([[1, 2, 3, 4], [5, 6]], [[1, 2, 9, 4], [5, 6]]) == pytest.approx((0.5 + 1.0) / 2)
