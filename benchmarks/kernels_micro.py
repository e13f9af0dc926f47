"""Micro-benchmark of the compiled CPU kernels vs the numpy fallback vs torch equivalents.

Run: PYTHONPATH=worker python benchmarks/kernels_micro.py [--threads N]
Prints the median of 10 runs in milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hd_compute.kernels import cpu


def median_ms(fn, runs: int = 10) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def torch_hamming(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # torch has no popcount: unpack bits (chunked) and use a float matmul: h = |a| + |b| - 2 a.b
    shifts = torch.arange(64, dtype=torch.int64)

    def unpack(x):
        return ((x.unsqueeze(-1) >> shifts) & 1).reshape(x.shape[0], -1).to(torch.float32)

    ua, ub = unpack(a), unpack(b)
    return (ua.sum(1, keepdim=True) + ub.sum(1) - 2 * ua @ ub.T).to(torch.int32)


def torch_bit_counts(x: torch.Tensor) -> torch.Tensor:
    shifts = torch.arange(64, dtype=torch.int64)
    out = torch.zeros(x.shape[1] * 64, dtype=torch.int32)
    for r0 in range(0, x.shape[0], 1000):
        out += ((x[r0 : r0 + 1000].unsqueeze(-1) >> shifts) & 1).reshape(-1, x.shape[1] * 64).sum(0, dtype=torch.int32)
    return out


def torch_pack(x: torch.Tensor) -> torch.Tensor:
    n, d = x.shape
    w = (d + 63) // 64
    bits = torch.zeros((n, w * 64), dtype=torch.int64)
    bits[:, :d] = (x < 0).to(torch.int64)
    return (bits.view(n, w, 64) << torch.arange(64, dtype=torch.int64)).sum(-1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    d = 10_000
    w = (d + 63) // 64
    a = torch.randint(-(2**63), 2**63 - 1, (1000, w), dtype=torch.int64, generator=g)
    b = torch.randint(-(2**63), 2**63 - 1, (1000, w), dtype=torch.int64, generator=g)
    a[:, -1] &= (1 << (d % 64)) - 1
    b[:, -1] &= (1 << (d % 64)) - 1
    x = torch.randint(-(2**63), 2**63 - 1, (10_000, w), dtype=torch.int64, generator=g)
    x[:, -1] &= (1 << (d % 64)) - 1
    m = torch.randint(-128, 128, (10_000, d), dtype=torch.int8, generator=g)

    print(f"features={cpu.features()} native={cpu.NATIVE_AVAILABLE} threads={args.threads}")
    r = args.runs
    rows = [
        (
            "hamming_matrix 1000x1000 D=10000",
            lambda: cpu.hamming_matrix(a, b),
            lambda: cpu.numpy_hamming_matrix(a.numpy(), b.numpy()),
            lambda: torch_hamming(a, b),
        ),
        (
            "bit_counts n=10000 D=10000",
            lambda: cpu.bit_counts(x),
            lambda: cpu.numpy_bit_counts(x.numpy()),
            lambda: torch_bit_counts(x),
        ),
        (
            "int8_column_sum 10000x10000",
            lambda: cpu.int8_column_sum(m),
            lambda: cpu.numpy_int8_column_sum(m.numpy()),
            lambda: torch.sum(m, dim=0, dtype=torch.int32),
        ),
        (
            "pack_sign_bits_int8 10000x10000",
            lambda: cpu.pack_sign_bits_int8(m),
            lambda: cpu.numpy_pack_sign_bits_int8(m.numpy()),
            lambda: torch_pack(m),
        ),
    ]
    print(f"{'kernel':36s} {'native ms':>10s} {'numpy ms':>10s} {'torch ms':>10s}")
    for name, fn_native, fn_numpy, fn_torch in rows:
        t_native = median_ms(fn_native, r) if cpu.NATIVE_AVAILABLE else float("nan")
        t_numpy = median_ms(fn_numpy, r)
        t_torch = median_ms(fn_torch, r)
        print(f"{name:36s} {t_native:10.2f} {t_numpy:10.2f} {t_torch:10.2f}")


if __name__ == "__main__":
    main()
