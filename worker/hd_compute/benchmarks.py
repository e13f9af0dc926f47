"""The seed document's import path: `from hd_compute.benchmarks import ContinuousBenchmark`."""

from .monitoring.benchmark import ContinuousBenchmark

__all__ = ["ContinuousBenchmark"]
