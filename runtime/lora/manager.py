"""The adapters a runtime serves: loading and unloading by name, and the LRU of device slots a step's batch uses.

Each load gets a serial id: a sequence holds the id of the adapter it started with, so unloading a name while its
requests run takes the name away from new requests at once, and the weights stay until the last of those requests
ends (then they are freed). Loaded adapters keep their tensors in host memory; at most `max_loras` of them sit in
the wrapped layers' slots at a time, the least recently used giving its slot up to an adapter a step needs. The
scheduler admits at most `max_loras` distinct adapters into the running batch, so a step's adapters always fit.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import torch
from torch import nn

from infleet.api.models import is_remote
from infleet.api.prefix import chain_hash
from infleet.runtime.lora import adapter as peft
from infleet.runtime.lora.adapter import LoRAError, LoRAWeights
from infleet.runtime.lora.layers import LoRABatch, LoRALinear


class UnknownAdapter(LoRAError):
    """No adapter of that name is loaded (HTTP 404)."""


@dataclass(eq=False)
class Adapter:
    name: str
    source: str  # the path or URI it was loaded from
    serial: int
    weights: LoRAWeights
    revision: str | None = None  # of a remote source: the branch, tag or commit asked for (None: its default)
    in_use: int = 0  # requests running with it
    unloaded: bool = False  # gone from the name table; freed when in_use reaches 0

    @property
    def hash_root(self) -> int:
        """The prefix cache's chain starts here for this adapter's sequences: its KV never mixes with another's."""
        return chain_hash(None, [-1 - self.serial])


def resolve(source: str, cache: Path | None, revision: str | None = None) -> Path:
    """A local directory for a path, a file:// URI, or a remote URI pulled (at `revision`) through the model fetcher
    into `cache`."""
    if is_remote(source):
        from infleet.runtime.fetch import FetchError, pull

        if cache is None:
            raise LoRAError(f"{source}: remote adapters need a model cache directory (--model-cache)")
        try:
            return pull(source, cache, revision)
        except FetchError as e:
            raise LoRAError(f"{source}: {e.reason.name}: {e.message}") from None
    parsed = urlparse(source)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:
        raise LoRAError(f"adapter URI scheme {parsed.scheme!r} is not supported")
    return Path(source).expanduser()


class LoRAManager:
    def __init__(self, model: nn.Module, *, max_loras: int, max_rank: int, cache: Path | None = None) -> None:
        if max_loras < 1 or max_rank < 1:
            raise ValueError("--max-loras and --max-lora-rank must be at least 1")
        self.max_loras = max_loras
        self.max_rank = max_rank
        self.cache = cache
        self.batch = LoRABatch()
        param = next(model.parameters())
        self.dtype = param.dtype if param.is_floating_point() else torch.float32
        self.device = param.device
        self.layers = dict(self._wrap(model))
        self.shapes = {key: (m.in_features, m.out_features) for key, m in self.layers.items()}
        self.by_name: dict[str, Adapter] = {}
        self.by_serial: dict[int, Adapter] = {}
        self.slots: OrderedDict[int, int] = OrderedDict()  # serial -> slot, least recently used first
        self._serials = 0
        self._lock = threading.Lock()

    def _wrap(self, model: nn.Module) -> Iterator[tuple[tuple[int, str], LoRALinear]]:
        """Swap every decoder projection for a LoRALinear around it, in place."""
        start = getattr(model, "layer_start", 0)
        for i, layer in enumerate(model.model.layers):  # type: ignore[union-attr, arg-type]
            for parent in (layer.self_attn, layer.mlp):
                for name in peft.TARGET_MODULES:
                    base = getattr(parent, name, None)
                    if base is None:
                        continue
                    wrapped = LoRALinear(base, self.batch, self.max_loras, self.max_rank, self.dtype, self.device)
                    setattr(parent, name, wrapped)
                    yield (start + i, name), wrapped

    # --- the name table (HTTP threads) -------------------------------------------------------------------------------
    def load(self, name: str, source: str, revision: str | None = None) -> Adapter:
        """Read, check and register the adapter at `source` as `name`; LoRAError says why not."""
        if not name or name != name.strip():
            raise LoRAError("lora_name: must be a non-empty name without surrounding spaces")
        if name in self.by_name:
            raise LoRAError(f"lora_name: an adapter named {name!r} is already loaded; unload it first")
        if revision is not None and not is_remote(source):
            raise LoRAError(f"revision: {source} is not remote; only hf://, s3:// and gs:// adapters have revisions")
        weights = peft.load(resolve(source, self.cache, revision), self.shapes, self.max_rank, self.dtype)
        with self._lock:
            if name in self.by_name:
                raise LoRAError(f"lora_name: an adapter named {name!r} is already loaded; unload it first")
            self._serials += 1
            adapter = Adapter(name, source, self._serials, weights, revision)
            self.by_name[name] = adapter
            self.by_serial[adapter.serial] = adapter
        return adapter

    def unload(self, name: str) -> None:
        """Take `name` away from new requests; its weights go once the requests already running with it end."""
        with self._lock:
            adapter = self.by_name.pop(name, None)
            if adapter is None:
                raise UnknownAdapter(f"lora_name: no adapter named {name!r} is loaded")
            adapter.unloaded = True
            if adapter.in_use == 0:
                self._free(adapter)

    def adapters(self) -> list[Adapter]:
        with self._lock:
            return list(self.by_name.values())

    def has(self, name: str) -> bool:
        return name in self.by_name

    # --- requests (the engine thread) --------------------------------------------------------------------------------
    def acquire(self, name: str) -> Adapter:
        """A request starts with adapter `name`: it holds the adapter until `release`."""
        with self._lock:
            adapter = self.by_name.get(name)
            if adapter is None:
                raise UnknownAdapter(f"model: the adapter {name!r} is not loaded (it may have been unloaded)")
            adapter.in_use += 1
            return adapter

    def release(self, serial: int) -> None:
        with self._lock:
            adapter = self.by_serial[serial]
            adapter.in_use -= 1
            if adapter.unloaded and adapter.in_use == 0:
                self._free(adapter)

    def _free(self, adapter: Adapter) -> None:
        del self.by_serial[adapter.serial]
        self.slots.pop(adapter.serial, None)  # the slot's stale weights are overwritten by its next user

    def begin(self, rows: Sequence[tuple[int | None, int]]) -> bool:
        """Set up a step: `rows` is (adapter serial or None, tokens) per sequence in batch order. Returns whether
        any token uses an adapter (else the wrapped layers do no LoRA work at all)."""
        slot_of_row: list[int] = []
        with self._lock:
            needed = {serial for serial, _ in rows if serial is not None}
            if not needed:
                return False
            slot = {serial: self._slot(serial, needed) for serial in needed}
        for serial, n in rows:
            slot_of_row.extend([-1 if serial is None else slot[serial]] * n)
        slots = torch.tensor(slot_of_row)
        picked = (slots >= 0).nonzero().squeeze(1)
        onehot = torch.zeros(len(picked), self.max_loras, self.max_rank, dtype=self.dtype)
        onehot[torch.arange(len(picked)), slots[picked]] = 1
        self.batch.all_rows = len(picked) == len(slot_of_row)
        self.batch.rows = picked.to(self.device, non_blocking=True)
        self.batch.mask = onehot.view(len(picked), -1).to(self.device, non_blocking=True)
        return True

    def end(self) -> None:
        self.batch.rows = self.batch.mask = None

    def _slot(self, serial: int, needed: set[int]) -> int:
        """The slot holding adapter `serial`, loading it into a free one or the least recently used one not needed
        by this step (the scheduler's cap on distinct adapters guarantees one)."""
        if serial in self.slots:
            self.slots.move_to_end(serial)
            return self.slots[serial]
        taken = set(self.slots.values())
        free = [s for s in range(self.max_loras) if s not in taken]
        if free:
            slot = free[0]
        else:
            victim = next(s for s in self.slots if s not in needed)
            slot = self.slots.pop(victim)
        weights = self.by_serial[serial].weights.modules
        for key, layer in self.layers.items():
            layer.set_slot(slot, weights.get(key))
        self.slots[serial] = slot
        return slot
