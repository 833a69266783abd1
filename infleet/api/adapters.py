"""The runtime's adapter API as its callers speak it (vLLM's, with infleet's `revision`): the runtime serves it, the
operator brings replicas to their spec's adapters with it, and the gateway has a replica load an adapter none holds."""

from __future__ import annotations

LOAD_PATH = "/v1/load_lora_adapter"
UNLOAD_PATH = "/v1/unload_lora_adapter"


def load_body(name: str, uri: str, revision: str | None = None) -> dict[str, str]:
    """`POST LOAD_PATH`'s body: the adapter's served name, where to load it from, at which revision if any."""
    return {"lora_name": name, "lora_path": uri} | ({"revision": revision} if revision else {})
