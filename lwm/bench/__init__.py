"""Measuring helpers for the scripts in scripts/bench/: attention memory and time, throughput."""
