"""Multi-LoRA serving: PEFT adapters (`adapter.py`), linear layers that add a batch's per-token deltas
(`layers.py`) and the registry with its LRU of device slots (`manager.py`)."""
