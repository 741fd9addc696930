"""Benchmarks for Loupe; see bench/RESULTS.md."""
