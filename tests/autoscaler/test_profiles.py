"""Which tier profile a deployment gets: a measured one for its model file and device, else the roofline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infleet.autoscaler import profiles

GGUF = "file:///models/SmolLM2-135M-Instruct.Q4_1.gguf"


def write_profile(folder: Path, gpu: str, **tiers: float) -> Path:
    path = folder / f"smollm2-{gpu}.json"
    doc = {
        "schema": "infleet.tier-profile/v1",
        "model": "SmolLM2-135M-Instruct.Q4_1",
        "model_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "gpu": gpu,
        "tiers": {t: {"capacity_tokens_per_second": c, "quality_loss": 0.0} for t, c in tiers.items()},
    }
    path.write_text(json.dumps(doc))
    return path


def test_a_measured_profile_of_the_replica_device_is_priced_as_the_accelerator(tmp_path: Path) -> None:
    write_profile(tmp_path, "cpu", bf16=15.0, int8=19.0, int4=24.0)
    choice = profiles.tier_options(GGUF, "NVIDIA-L4", ["bf16", "int8"], 2, replica_device="cpu", dirs=[tmp_path])
    assert [(o.tier, o.gpu, o.capacity_tokens_per_second, o.gpus_per_replica) for o in choice.options] == [
        ("bf16", "NVIDIA-L4", 15.0, 2),
        ("int8", "NVIDIA-L4", 19.0, 2),
    ]
    assert "smollm2-cpu.json" in choice.source


def test_a_measured_profile_with_prefill_is_priced_at_the_request_mix(tmp_path: Path) -> None:
    path = write_profile(tmp_path, "cpu", bf16=60.0)
    doc = json.loads(path.read_text())
    doc["tiers"]["bf16"]["prefill_tokens_per_second"] = 600.0
    path.write_text(json.dumps(doc))
    chat = profiles.tier_options(GGUF, "NVIDIA-L4", ["bf16"], replica_device="cpu", dirs=[tmp_path], mix=(30, 15))
    rag = profiles.tier_options(GGUF, "NVIDIA-L4", ["bf16"], replica_device="cpu", dirs=[tmp_path], mix=(3000, 15))
    # a request holds the replica output / decode + prompt / prefill seconds
    assert chat.options[0].capacity_tokens_per_second == pytest.approx(45 / (15 / 60 + 30 / 600))
    assert rag.options[0].capacity_tokens_per_second == pytest.approx(3015 / (15 / 60 + 3000 / 600))


def test_without_a_measurement_on_that_device_a_known_shape_gets_the_roofline(tmp_path: Path) -> None:
    write_profile(tmp_path, "cpu", bf16=15.0)
    choice = profiles.tier_options(GGUF, "NVIDIA-L4", ["bf16", "int4"], dirs=[tmp_path])  # replicas on the L4
    assert choice.source == "roofline of smollm2-135m on NVIDIA-L4, requests of 512 prompt + 128 output tokens"
    caps = {o.tier: o.capacity_tokens_per_second for o in choice.options}
    assert set(caps) == {"bf16", "int4"} and caps["int4"] > 15.0 * 100  # a GPU, not a CPU


def test_an_unknown_model_has_no_profile(tmp_path: Path) -> None:
    choice = profiles.tier_options("hf://someone/unknown-model", "NVIDIA-L4", ["bf16"], dirs=[tmp_path])
    assert choice.options == () and "no measured profile of unknown-model" in choice.source


def test_the_shipped_cpu_profile_is_found_for_the_smollm2_gguf() -> None:
    choice = profiles.tier_options(GGUF, "NVIDIA-L4", ["bf16", "int8", "int4", "fp8"], replica_device="cpu")
    assert {o.tier for o in choice.options} == {"bf16", "int8", "int4", "fp8"}
    assert "smollm2-135m-cpu.json" in choice.source
