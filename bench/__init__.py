"""Benchmarks of vecnest on the shared evaluation data (../shared/data)."""
