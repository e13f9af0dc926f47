"""Builds the one compiled piece: the CPU popcount/bit-count kernels.

Everything else is declared in pyproject.toml. The C file is compiled without -march so one wheel runs
everywhere; it picks AVX-512 (VPOPCNTDQ/BW) or scalar POPCNT code paths at run time.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "hd_compute.kernels._cpu",
            sources=["worker/hd_compute/kernels/cpu_kernels.c"],
            # -fopenmp: parallel regions run on torch's own OpenMP thread pool (see the C file's header).
            extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra", "-fopenmp"],
            extra_link_args=["-fopenmp", "-lpthread"],
        )
    ]
)
