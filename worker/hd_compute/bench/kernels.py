"""Kernel candidates timed side by side: the measurements behind the choices in kernels/dispatch.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from hd_compute.kernels import cpu, dispatch
from hd_compute.kernels.bits import WORD_BITS, random_words, unpack_bits

from .measure import time_call


@dataclass
class Candidate:
    operation: str
    implementation: str
    chosen: bool
    run: Callable[[], object]


def cpu_candidates(seed: int = 0) -> list[Candidate]:
    generator = torch.Generator().manual_seed(seed)
    words_q = random_words((1_000,), 10_000, generator, torch.device("cpu"))
    words_i = random_words((1_000,), 10_000, generator, torch.device("cpu"))
    codes_q = (1 - 2 * unpack_bits(words_q, words_q.shape[1] * WORD_BITS).to(torch.int8)).to(torch.int8)
    codes_i = (1 - 2 * unpack_bits(words_i, words_i.shape[1] * WORD_BITS).to(torch.int8)).to(torch.int8)
    map_q = codes_q[:, :10_000].contiguous()
    map_i = codes_i[:, :10_000].contiguous()
    bundle_words = random_words((10_000,), 10_000, generator, torch.device("cpu"))
    bundle_map = (1 - 2 * torch.randint(0, 2, (10_000, 10_000), dtype=torch.int8, generator=generator)).to(torch.int8)
    bundle_float = bundle_map.float()
    np_q, np_i, np_words = words_q.numpy(), words_i.numpy(), bundle_words.numpy()
    native = cpu.NATIVE_AVAILABLE
    return [
        Candidate(
            "BSC hamming 1000x1000 D=10k",
            f"native popcount ({cpu.features()})",
            native,
            lambda: cpu.hamming_matrix(words_q, words_i),
        ),
        Candidate(
            "BSC hamming 1000x1000 D=10k",
            "numpy bitwise_count",
            not native,
            lambda: cpu.numpy_hamming_matrix(np_q, np_i),
        ),
        Candidate(
            "BSC hamming 1000x1000 D=10k",
            "int8 GEMM on ±1 codes (torch._int_mm)",
            False,
            lambda: dispatch.int8_dot_matrix(codes_q, codes_i),
        ),
        Candidate(
            "MAP dot 1000x1000 D=10k",
            "sign bits + native popcount",
            True,
            lambda: cpu.hamming_matrix(cpu.pack_sign_bits_int8(map_q), cpu.pack_sign_bits_int8(map_i)),
        ),
        Candidate(
            "MAP dot 1000x1000 D=10k",
            "int8 GEMM (torch._int_mm)",
            False,
            lambda: dispatch.int8_dot_matrix(map_q, map_i),
        ),
        Candidate("MAP dot 1000x1000 D=10k", "float32 GEMM", False, lambda: map_q.float() @ map_i.float().T),
        Candidate(
            "MAP column sum 10k x 10k", "native int8 column sum", native, lambda: cpu.int8_column_sum(bundle_map)
        ),
        Candidate(
            "MAP column sum 10k x 10k",
            "torch.sum(int8 -> int32)",
            False,
            lambda: bundle_map.sum(dim=0, dtype=torch.int32),
        ),
        Candidate("MAP column sum 10k x 10k", "torch.sum(float32)", False, lambda: bundle_float.sum(dim=0)),
        Candidate("BSC bit counts 10k x 10k", "native bit counts", native, lambda: cpu.bit_counts(bundle_words)),
        Candidate(
            "BSC bit counts 10k x 10k", "numpy (unpackbits + sum)", not native, lambda: cpu.numpy_bit_counts(np_words)
        ),
    ]


def time_candidates(candidates: list[Candidate], repeats: int) -> list[dict]:
    device = torch.device("cpu")
    return [
        {
            "operation": c.operation,
            "implementation": c.implementation,
            "chosen": c.chosen,
            "seconds": time_call(c.run, device, repeats=repeats),
        }
        for c in candidates
    ]
