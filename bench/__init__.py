"""Benchmarks: `python3 dev.py bench NAME` (see bench/__main__.py)."""
