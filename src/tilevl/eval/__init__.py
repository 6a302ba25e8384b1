"""Benchmark evaluation: benchmark files → runner → scorer → report.

`tilevl.eval.metrics` holds the benchmarks' own scoring rules as pure functions.
"""
