"""The quantization tiers, from the most precise to the smallest: the runtime's `--tier`, the CRD's enum, the
autoscaler's chooser and the reports all name them from here."""

from __future__ import annotations

TIERS = ("bf16", "fp8", "int8", "int4")
