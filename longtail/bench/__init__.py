"""Reproduction tables and throughput benchmarks (``longtail bench``)."""
