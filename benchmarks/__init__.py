"""The benchmark suite: run each script as ``python -m benchmarks.NAME`` from the repository root
(shared helpers in benchmarks/common.py; results and how they were made in benchmarks/RESULTS.md)."""
