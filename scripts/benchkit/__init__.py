"""The benchmark behind scripts/bench.py, split by job: plans, workers, render."""
