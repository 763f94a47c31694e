"""The benchmark harness of ARCHITECTURE section 6: `python -m benchmarks --help`."""
