"""Benchmarks and load tests: scripts that print tables and write JSON, never timed assertions."""
