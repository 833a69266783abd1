"""Which tier profile describes one deployment's replicas, so the chooser can price its tiers.

In order:
1. a measured profile (`infleet.tier-profile/v1`, written by `python -m infleet.runtime.quant.profile`) of the same
   model file on the device the replicas run on. That device is the accelerator type, unless the operator is told
   that replicas run elsewhere (`--replica-device cpu`: the local fleet, whose simulated GPU nodes run every runtime
   pod as a CPU process, so the CPU measurement is what they really do);
2. the roofline model of the accelerator for a model shape known by name (`latency_model.MODELS`);
3. nothing: the chooser keeps the current tier and says why.

Capacities come from the profile; prices stay the accelerator's (what a node of that type bills), so every option is
re-labelled with the accelerator type. Only the deployment's allowed tiers are offered, and only those whose weights
fit in the accelerator's memory (the roofline model leaves out what does not fit in the same way).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from importlib.resources import files
from pathlib import Path

from infleet.autoscaler.latency_model import DEVICES, MODELS, SHORT_NAMES
from infleet.autoscaler.tiers import ProfileError, TierOption, load_profile, roofline_profile

# the measured profiles shipped with the runtime
MEASURED_DIR = Path(str(files("infleet.runtime.quant").joinpath("profiles")))
# the request mix a roofline capacity is computed for when nothing better is known (MLPerf-like chat)
ROOFLINE_PROMPT, ROOFLINE_OUTPUT = 512.0, 128.0


@dataclass(frozen=True)
class ProfileChoice:
    options: tuple[TierOption, ...]
    source: str  # where the options came from, for status and logs


def model_file(uri: str) -> str:
    """The last path element of a model URI (`file:///m/SmolLM2.Q4_1.gguf` -> `SmolLM2.Q4_1.gguf`)."""
    return uri.rstrip("/").rsplit("/", 1)[-1]


def _normalized(text: str) -> str:
    return re.sub(r"[^a-z0-9.]", "", text.lower())


def measured(uri: str, device: str, dirs: Iterable[Path] = (MEASURED_DIR,)) -> tuple[list[TierOption], Path] | None:
    """The first measured profile of this model file on `device`, or None."""
    wanted = _normalized(model_file(uri))
    for folder in dirs:
        for path in sorted(Path(folder).glob("*.json")):
            try:
                doc = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if not isinstance(doc, dict) or doc.get("schema") != "infleet.tier-profile/v1":
                continue
            names = {_normalized(str(doc.get(k, ""))) for k in ("model_file", "model")} - {""}
            if str(doc.get("gpu", doc.get("device", ""))) == device and any(n in wanted for n in names):
                try:
                    return load_profile(path), path
                except ProfileError:
                    continue
    return None


def known_shape(uri: str) -> str | None:
    """A `latency_model.MODELS` name that the URI names (`hf://meta-llama/Llama-3.1-8B` -> `llama-3.1-8b`)."""
    text = _normalized(uri)
    return next((name for name in MODELS if _normalized(name) in text), None)


def fits(option: TierOption) -> bool:
    """A replica's weights fit in its GPUs' memory; a product the latency model does not know is taken at its word."""
    dev = DEVICES.get(option.gpu)
    return dev is None or option.memory_bytes <= dev.memory_bytes * option.gpus_per_replica


def tier_options(
    uri: str,
    accelerator: str,
    allowed: Iterable[str],
    gpus_per_replica: int = 1,
    replica_device: str | None = None,
    tpot_slo: float | None = None,
    ttft_slo: float | None = None,
    dirs: Iterable[Path] = (MEASURED_DIR,),
    mix: tuple[float, float] | None = None,
) -> ProfileChoice:
    """The allowed tiers' options on `accelerator`, capacities in prompt + output tokens/s at the token `mix` (mean
    prompt, mean output; None: the reference mix): measured, else the roofline, else none, with where they came from."""
    allowed = list(allowed)
    mix = mix or (ROOFLINE_PROMPT, ROOFLINE_OUTPUT)
    at = f"requests of {mix[0]:g} prompt + {mix[1]:g} output tokens"
    device = replica_device or accelerator
    found = measured(uri, device, dirs)
    if found is not None:
        options, path = found
        # a measured replica is one process; a replica of several GPUs bills them all
        relabelled = (replace(o.at_mix(*mix), gpu=accelerator, gpus_per_replica=gpus_per_replica) for o in options)
        chosen = tuple(o for o in relabelled if o.tier in allowed and fits(o))
        return ProfileChoice(chosen, f"measured profile {path.name} ({device}), {at}")
    shape = known_shape(uri)
    if shape and (accelerator in DEVICES or accelerator in SHORT_NAMES):
        options = roofline_profile(
            MODELS[shape],
            [accelerator],
            mix[0],
            mix[1],
            tpot_slo,
            ttft_slo,
            tiers=[t for t in allowed],
            gpus_per_replica=gpus_per_replica,
        )
        return ProfileChoice(tuple(options), f"roofline of {shape} on {accelerator}, {at}")
    return ProfileChoice((), f"no measured profile of {model_file(uri)} on {device} and no known model shape")


@functools.lru_cache(maxsize=4096)
def replica_capacity(
    uri: str,
    accelerator: str,
    tier: str,
    gpus_per_replica: int = 1,
    replica_device: str | None = None,
    tpot_slo: float | None = None,
    ttft_slo: float | None = None,
    mix: tuple[float, float] | None = None,
) -> float | None:
    """One replica's tokens/s at the SLO at `tier`: the capacity the autoscaler sizes by, from the same profile the
    chooser prices the tier by. A roofline profile is asked about the recent token `mix` (round it: results are
    cached), at the TPOT SLO alone when the mix's mean prompt cannot meet the TTFT SLO at any load (the simulator's
    `causal_capacity` does the same); a measured one at the mix too (`TierOption.at_mix`). None when no profile knows
    the model."""
    for ttft in (ttft_slo, None) if ttft_slo is not None else (None,):
        options = tier_options(uri, accelerator, [tier], gpus_per_replica, replica_device, tpot_slo, ttft, mix=mix)
        if options.options:
            return options.options[0].capacity_tokens_per_second
    return None
