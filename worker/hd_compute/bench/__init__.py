"""hdc-bench: our kernels against torchhd and the memory-bandwidth roofline, in one process on the same data."""
