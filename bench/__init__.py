"""Benchmarks of the durable core; run with ``python -m bench``."""
