"""Quantization tiers: weight formats (formats.py), layers and the model swap (tiers.py), quality (profile.py)."""
