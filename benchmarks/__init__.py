"""Benchmarks: scripts that measure and print, side by side in one run; never part of the tests."""
