"""Benchmarks: scripts that measure speed, memory and quality and write JSON plus a table (never pass/fail)."""
