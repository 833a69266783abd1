"""A PEFT-format LoRA adapter read from disk: `adapter_config.json` and `adapter_model.safetensors`.

PEFT saves `base_model.model.model.layers.{i}.{self_attn|mlp}.{proj}.lora_A.weight` (`[r, in]`) and `lora_B.weight`
(`[out, r]`); the delta on a projection's output is `scaling * B @ A @ x`, with `scaling = lora_alpha / r`
(`lora_alpha / sqrt(r)` under rsLoRA). What this runtime cannot apply exactly (DoRA, trained biases, extra saved
modules, embedding LoRA, per-module alpha patterns) is refused with the reason rather than served approximately.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_KEY = re.compile(
    r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.\w+)?\.weight$"
)


class LoRAError(ValueError):
    """The adapter cannot be served; the message says why (an HTTP 400 at the load API, a start-up error)."""


@dataclass
class LoRAWeights:
    """One adapter's tensors: (layer index, module name) -> (A `[r, in]`, B `[out, r]` already times `scaling`)."""

    rank: int
    modules: dict[tuple[int, str], tuple[Tensor, Tensor]]


def read_config(path: Path) -> dict[str, object]:
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise LoRAError(f"{path}: no {CONFIG_FILE} (a PEFT adapter directory has one)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise LoRAError(f"{path / CONFIG_FILE}: cannot read it: {e}") from None
    if not isinstance(config, dict):
        raise LoRAError(f"{path / CONFIG_FILE}: expected a JSON object")
    return config


def check_config(config: dict[str, object], where: Path) -> tuple[float, bool]:
    """(lora_alpha, rsLoRA?) from a PEFT LoraConfig, or LoRAError for what the runtime would serve wrongly."""
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise LoRAError(f"{where}: peft_type {config.get('peft_type')!r} is not LORA")
    r, alpha = config.get("r"), config.get("lora_alpha", config.get("r"))
    if not isinstance(r, int) or r < 1 or not isinstance(alpha, int | float):
        raise LoRAError(f"{where}: r must be a positive integer and lora_alpha a number (got r={r!r}, alpha={alpha!r})")
    refused = {
        "use_dora": "DoRA adapters",
        "modules_to_save": "adapters that save whole modules (modules_to_save)",
        "alpha_pattern": "per-module lora_alpha (alpha_pattern)",
        "fan_in_fan_out": "fan_in_fan_out weights (Conv1D models)",
    }
    for key, what in refused.items():
        if config.get(key):
            raise LoRAError(f"{where}: {what} are not supported")
    if config.get("bias", "none") != "none":
        raise LoRAError(f"{where}: trained biases (bias={config.get('bias')!r}) are not supported")
    return float(alpha), bool(config.get("use_rslora"))


def load(path: Path, shapes: dict[tuple[int, str], tuple[int, int]], max_rank: int, dtype: torch.dtype) -> LoRAWeights:
    """Read and check the adapter at `path` against the model's projections (`shapes`: (layer, module) ->
    (in, out)); the tensors come back on the CPU in `dtype`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_dir():
        raise LoRAError(f"adapter path {str(path)!r} is not a directory")
    alpha, rslora = check_config(read_config(path), path)  # each module's rank is read off its tensors
    if not (path / WEIGHTS_FILE).is_file():
        raise LoRAError(f"{path}: no {WEIGHTS_FILE} (save the adapter with safe_serialization=True)")
    try:
        tensors = load_file(str(path / WEIGHTS_FILE))
    except (SafetensorError, OSError) as e:
        raise LoRAError(f"{path / WEIGHTS_FILE}: cannot read it: {e}") from None
    pairs: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, tensor in tensors.items():
        m = _KEY.match(key)
        if m is None or m.group(2) not in TARGET_MODULES:
            supported = ", ".join(TARGET_MODULES)
            raise LoRAError(f"{path}: weight {key!r} is not a LoRA of a decoder projection ({supported})")
        layer = (int(m.group(1)), m.group(2))
        if layer not in shapes:
            raise LoRAError(f"{path}: weight {key!r} names layer {layer[0]}, which this model does not have")
        pairs.setdefault(layer, {})[m.group(3)] = tensor
    if not pairs:
        raise LoRAError(f"{path / WEIGHTS_FILE}: holds no LoRA weights")
    modules: dict[tuple[int, str], tuple[Tensor, Tensor]] = {}
    top = 0
    for (index, name), ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise LoRAError(f"{path}: layer {index} {name} has lora_{''.join(ab)} but not both lora_A and lora_B")
        a, b = ab["A"], ab["B"]
        k, n = shapes[(index, name)]
        rank = a.shape[0]
        if a.dim() != 2 or b.dim() != 2 or a.shape[1] != k or b.shape != (n, rank):
            raise LoRAError(
                f"{path}: layer {index} {name}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not fit the "
                f"model's projection ({k} -> {n}): expected [r, {k}] and [{n}, r]"
            )
        if rank > max_rank:
            raise LoRAError(f"{path}: rank {rank} (layer {index} {name}) is above --max-lora-rank {max_rank}")
        scale = alpha / math.sqrt(rank) if rslora else alpha / rank
        modules[(index, name)] = (a.to(dtype), (b.float() * scale).to(dtype))
        top = max(top, rank)
    return LoRAWeights(top, modules)
