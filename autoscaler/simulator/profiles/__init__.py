"""Latency profiles of infleet's runtime measured on this project's CPU (`calibration.py` writes and reads them)."""
