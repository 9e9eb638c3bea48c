"""Benchmarks: ``gotd bench ...``; each writes a report under docs/benchmarks/."""
