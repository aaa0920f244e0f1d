"""Benchmarks of the MID pipeline: each is ``python -m bench.<name> [--quick]``.

Every benchmark prints its figures and, as its last line, one JSON object with the measured figures, the
ratio, the goal and whether it is met. Results and the exact commands are in ``docs/benchmarks.md``.
Benchmarks are measurements, not tests: ``tests/test_bench_smoke.py`` only checks that each one runs at
``--quick`` size and prints the expected keys.
"""
