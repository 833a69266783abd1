"""Read only this rank's part of a checkpoint: the tensors of its layers, and of those only its rows or columns.

GGUF stores each weight row by row in quantized blocks, so a row range is a byte range of the memory-mapped file
and a column range that falls on block boundaries is one too: only those bytes are dequantized. Safetensors reads
slices lazily. Names are Hugging Face's throughout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors import safe_open

from infleet.runtime.config import ModelConfig
from infleet.runtime.loader.gguf import _GLOBAL_NAMES, _LAYER_NAMES, read_config, read_tokenizer, unpermute_rope_rows
from infleet.runtime.loader.safetensors import read_config as read_hf_config
from infleet.runtime.tokenizer import Tokenizer

# name -> None (skip it), "all", or (dimension, index range) to keep
Selector = Callable[[str], "str | tuple[int, range] | None"]

_FLOAT_TYPES = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16)


def gguf_path(path: Path) -> Path | None:
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir() and not (path / "config.json").exists():
        found = sorted(path.glob("*.gguf"))
        if len(found) == 1:
            return found[0]
    return None


def read_metadata(path: Path) -> tuple[ModelConfig, Tokenizer]:
    """Config and tokenizer without touching the weights."""
    gg = gguf_path(path)
    if gg is not None:
        reader = gguf.GGUFReader(gg)
        config = read_config(reader, name=gg.stem)
        return config, read_tokenizer(reader, config)
    config = read_hf_config(path)
    return config, Tokenizer.from_hf_dir(path, eos_token_ids=config.eos_token_ids)


def _gguf_name(name: str) -> tuple[str, str]:
    """GGUF tensor name -> (Hugging Face name, GGUF kind)."""
    stem, _, suffix = name.rpartition(".")
    parts = stem.split(".")
    if parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{suffix}", parts[2]
    if stem in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[stem]}.{suffix}", stem
    raise ValueError(f"unexpected tensor {name!r} in a Llama GGUF")


def _gguf_slice(t: gguf.ReaderTensor, dim: int, keep: range) -> np.ndarray:
    data = t.data
    if dim == 0:
        return np.asarray(gguf.quants.dequantize(data[keep.start : keep.stop], t.tensor_type), dtype=np.float32)
    if t.tensor_type in _FLOAT_TYPES:
        return np.asarray(data[:, keep.start : keep.stop], dtype=np.float32)
    block, size = gguf.GGML_QUANT_SIZES[t.tensor_type]
    if keep.start % block == 0 and keep.stop % block == 0:  # whole blocks: a byte range of every row
        raw = data[:, keep.start // block * size : keep.stop // block * size]
        return np.asarray(gguf.quants.dequantize(np.ascontiguousarray(raw), t.tensor_type), dtype=np.float32)
    full = np.asarray(gguf.quants.dequantize(data, t.tensor_type), dtype=np.float32)
    return full[:, keep.start : keep.stop]


def iter_gguf_shard(path: Path, config: ModelConfig, select: Selector) -> Iterator[tuple[str, torch.Tensor]]:
    reader = gguf.GGUFReader(path)
    names = {_gguf_name(t.name)[0] for t in reader.tensors}
    for t in reader.tensors:
        name, kind = _gguf_name(t.name)
        targets = [name]
        if name == "model.embed_tokens.weight" and "lm_head.weight" not in names:
            targets.append("lm_head.weight")  # tied: the last stage reads the same rows as its LM head
        for target in targets:
            choice = select(target)
            if choice is None:
                continue
            dim, keep = (0, range(int(t.shape[-1]))) if isinstance(choice, str) else choice
            if len(t.shape) == 1:
                w = np.asarray(t.data, dtype=np.float32)
            else:
                w = _gguf_slice(t, dim, keep)
            if kind in ("attn_q", "attn_k"):
                # llama.cpp permutes rows within each head; a shard holds whole heads, so undo it per shard
                w = unpermute_rope_rows(w, w.shape[0] // config.head_dim)
            yield target, torch.from_numpy(np.require(w, requirements=["C", "W"]))


def iter_safetensors_shard(path: Path, config: ModelConfig, select: Selector) -> Iterator[tuple[str, torch.Tensor]]:
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{path} has no *.safetensors files")
    present: set[str] = set()
    for shard in shards:
        with safe_open(str(shard), framework="pt") as f:
            present |= set(f.keys())
    for shard in shards:
        with safe_open(str(shard), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118
                targets = [name]
                if name == "model.embed_tokens.weight" and "lm_head.weight" not in present:
                    targets.append("lm_head.weight")
                for target in targets:
                    choice = select(target)
                    if choice is None:
                        continue
                    if isinstance(choice, str):
                        yield target, f.get_tensor(name)
                        continue
                    dim, keep = choice
                    part = f.get_slice(name)
                    yield target, (part[keep.start : keep.stop] if dim == 0 else part[:, keep.start : keep.stop])


def iter_shard(path: Path, config: ModelConfig, select: Selector) -> Iterator[tuple[str, torch.Tensor]]:
    gg = gguf_path(path)
    if gg is not None:
        return iter_gguf_shard(gg, config, select)
    return iter_safetensors_shard(path, config, select)
