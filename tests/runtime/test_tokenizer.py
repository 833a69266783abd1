"""The tokenizer rebuilt from GGUF metadata against transformers' own GGUF tokenizer, plus streaming decode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from infleet.runtime.loader import ModelLoadError, load_model
from infleet.runtime.loader.gguf import read_config, read_tokenizer
from infleet.runtime.tokenizer import Tokenizer

TEXTS = [
    "Hello, world!",
    "The year 2024 had 366 days; π ≈ 3.14159.",
    "def f(x):\n\treturn x ** 2  # square\n\n\n",
    "  leading spaces and trailing   ",
    "Emoji: 😀👍🏽 and CJK: 你好，世界。 and accents: naïve café",
    "<|im_start|>user\nhi<|im_end|>\n",
    "can't won't I'll we've they're",
    "",
]


@pytest.fixture(scope="module")
def tokenizer(smollm2_path: Path) -> Tokenizer:
    import gguf

    reader = gguf.GGUFReader(smollm2_path)
    return read_tokenizer(reader, read_config(reader, "smollm2"))


@pytest.mark.model
@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_transformers(tokenizer: Tokenizer, hf_smollm2_tokenizer: Any, text: str) -> None:
    ours = tokenizer.encode(text)
    assert ours == hf_smollm2_tokenizer.encode(text)
    assert tokenizer.decode(ours, skip_special_tokens=False) == text


@pytest.mark.model
def test_chat_template_matches_transformers(tokenizer: Tokenizer, hf_smollm2_tokenizer: Any) -> None:
    messages = [{"role": "user", "content": "What is 2+2?"}]
    ours = tokenizer.apply_chat_template(messages)
    assert ours == hf_smollm2_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ours.endswith("<|im_start|>assistant\n")
    with_system = [{"role": "system", "content": "Be brief."}, *messages]
    assert tokenizer.apply_chat_template(with_system, add_generation_prompt=False).startswith(
        "<|im_start|>system\nBe brief.<|im_end|>"
    )


def test_special_tokens(tokenizer: Tokenizer) -> None:
    assert tokenizer.eos_token_ids == [2]
    assert tokenizer.encode("<|im_end|>") == [2]  # a control token is never split into pieces
    assert tokenizer.decode([2, 28]) == tokenizer.decode([28])  # and is skipped when decoding for users


@pytest.mark.parametrize("text", TEXTS)
def test_incremental_detokenization_reassembles_text(tokenizer: Tokenizer, text: str) -> None:
    prompt = tokenizer.encode("Say:")
    ids = tokenizer.encode(text, add_special_tokens=False)
    detok = tokenizer.detokenizer(prompt)
    deltas = [detok.step([i]) for i in ids]
    deltas.append(detok.flush())
    assert "".join(deltas) == tokenizer.decode(ids)
    assert not any("\ufffd" in d for d in deltas)


def test_bad_model_paths_fail_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "missing.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(ModelLoadError, match="not a readable GGUF") as info:
        load_model(tmp_path / "junk.gguf")
    assert "\n" not in str(info.value)
    (tmp_path / "config.json").write_text('{"architectures": ["BertModel"], "model_type": "bert"}')
    with pytest.raises(ModelLoadError, match="unsupported architecture 'BertModel'"):
        load_model(tmp_path)
