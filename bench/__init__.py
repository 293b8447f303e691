"""Benchmarks (not tests): each module runs real processes on loopback and reports numbers."""
