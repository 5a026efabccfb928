"""Latency measurement: per-component timings, baselines and regression checks (dbunet-bench)."""
