"""Text <-> token ids with Hugging Face `tokenizers`, chat templates (`infleet.api.chat`), streaming detokenization.

GGUF files carry their vocabulary as metadata (tokens, merges, token types); `Tokenizer.from_gguf_vocab` rebuilds
the byte-level BPE tokenizer from it. The HF layout ships `tokenizer.json` (+ `tokenizer_config.json` for the
chat template and special tokens).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer

from infleet.api.chat import render_chat

# llama.cpp's token types (gguf.TokenType)
_CONTROL, _USER_DEFINED = 3, 4

# Pre-tokenizer regexes keyed by GGUF `tokenizer.ggml.pre` (the split applied before byte-level BPE).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


def _byte_level_pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    if pre in ("smollm", "starcoder", "refact", "codeshell"):
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    if pre in ("llama-bpe", "llama3", "smaug-bpe"):
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    if pre in ("default", "gpt2", "gpt-2", ""):
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    raise ValueError(f"unsupported GGUF pre-tokenizer {pre!r} (supported: smollm, llama-bpe, gpt2)")


class Tokenizer:
    """The engine's and the server's one view of the vocabulary."""

    def __init__(
        self,
        tokenizer: HFTokenizer,
        *,
        chat_template: str | None,
        bos_token: str | None,
        eos_token_ids: list[int],
        add_bos_token: bool = False,
    ) -> None:
        self.hf = tokenizer
        self.chat_template = chat_template
        self.bos_token = bos_token
        self.bos_token_id = tokenizer.token_to_id(bos_token) if bos_token else None
        self.eos_token_ids = list(dict.fromkeys(eos_token_ids))
        self.add_bos_token = add_bos_token
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

    # --- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_gguf_vocab(
        cls,
        *,
        model: str,
        pre: str,
        tokens: list[str],
        merges: list[str],
        token_types: list[int],
        bos_token_id: int | None,
        eos_token_id: int | None,
        add_bos_token: bool,
        chat_template: str | None,
    ) -> Tokenizer:
        if model != "gpt2":
            raise ValueError(f"unsupported GGUF tokenizer model {model!r} (supported: gpt2 byte-level BPE)")
        vocab = {tok: i for i, tok in enumerate(tokens)}
        pairs = [tuple(m.split(" ", 1)) for m in merges]
        hf = HFTokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))  # type: ignore[arg-type]
        hf.pre_tokenizer = _byte_level_pre_tokenizer(pre)
        hf.decoder = decoders.ByteLevel()
        added = [
            AddedToken(tok, special=typ == _CONTROL, normalized=False)
            for tok, typ in zip(tokens, token_types, strict=True)
            if typ in (_CONTROL, _USER_DEFINED)
        ]
        hf.add_tokens(added)
        bos = tokens[bos_token_id] if bos_token_id is not None else None
        if add_bos_token and bos is not None:
            hf.post_processor = processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_token_id)]
            )
        else:
            hf.post_processor = processors.ByteLevel(trim_offsets=False)
        eos = [eos_token_id] if eos_token_id is not None else []
        return cls(hf, chat_template=chat_template, bos_token=bos, eos_token_ids=eos, add_bos_token=add_bos_token)

    @classmethod
    def from_hf_dir(cls, path: Path, eos_token_ids: list[int] | None = None) -> Tokenizer:
        tok_file = path / "tokenizer.json"
        if not tok_file.exists():
            raise FileNotFoundError(f"{path} has no tokenizer.json")
        hf = HFTokenizer.from_file(str(tok_file))
        cfg: dict[str, Any] = {}
        if (path / "tokenizer_config.json").exists():
            cfg = json.loads((path / "tokenizer_config.json").read_text())
        template = cfg.get("chat_template")
        if isinstance(template, list):  # a list of named templates: take the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if template is None and (path / "chat_template.jinja").exists():
            template = (path / "chat_template.jinja").read_text()
        eos_ids = list(eos_token_ids or [])
        eos_tok = _token_str(cfg.get("eos_token"))
        eos_id = hf.token_to_id(eos_tok) if eos_tok else None
        if eos_id is not None:
            eos_ids.append(eos_id)
        return cls(
            hf,
            chat_template=template,
            bos_token=_token_str(cfg.get("bos_token")),
            eos_token_ids=eos_ids,
            add_bos_token=bool(cfg.get("add_bos_token", False)),
        )

    # --- text <-> ids -----------------------------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return str(self.hf.decode(ids, skip_special_tokens=skip_special_tokens))

    def apply_chat_template(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **extra: Any
    ) -> str:
        """Render the model's chat template (`extra`: more template variables, e.g. `tools`); the result is encoded
        with `add_special_tokens=False`."""
        if self.chat_template is None:
            raise ValueError("this model has no chat template; use a completion request instead")
        return render_chat(
            self.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token,
            **extra,
        )

    @property
    def eos_token(self) -> str:
        return self.decode(self.eos_token_ids[:1], skip_special_tokens=False) if self.eos_token_ids else ""

    def detokenizer(self, prompt_ids: list[int]) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self, prompt_ids)


def _token_str(tok: Any) -> str | None:
    if isinstance(tok, dict):
        return tok.get("content")
    return tok if isinstance(tok, str) else None


@dataclass
class IncrementalDetokenizer:
    """Turns a growing list of ids into text deltas without splitting multi-byte characters.

    Decodes a short window (`prefix_offset:`) and emits what goes beyond the window's earlier text, holding back
    while the tail is an incomplete UTF-8 sequence (decoded as U+FFFD).
    """

    tokenizer: Tokenizer
    ids: list[int]
    prefix_offset: int = 0
    read_offset: int = 0

    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int]) -> None:
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids[-6:])  # a little context so leading spaces decode as in the full text
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def step(self, new_ids: list[int]) -> str:
        self.ids.extend(new_ids)
        decode = self.tokenizer.decode
        prefix_text = decode(self.ids[self.prefix_offset : self.read_offset])
        full_text = decode(self.ids[self.prefix_offset :])
        if len(full_text) > len(prefix_text) and not full_text.endswith("\ufffd"):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return full_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """Whatever is held back (an incomplete character at the very end) once generation stops."""
        prefix_text = self.tokenizer.decode(self.ids[self.prefix_offset : self.read_offset])
        full_text = self.tokenizer.decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return full_text[len(prefix_text) :] if len(full_text) > len(prefix_text) else ""
