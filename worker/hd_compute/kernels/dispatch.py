"""Kernel choice per device: the only module that knows which implementation runs where.

CPU: the compiled kernels in `kernels.cpu` (AVX-512 VPOPCNTDQ/BW or POPCNT paths picked at run time, numpy
fallback when the extension is missing). CUDA: int8 tensor-core GEMM (`torch._int_mm`) on ±1 codes, which
turns a Hamming distance into a dot product: for ±1 vectors of length L, hamming = (L - dot) / 2.
The choices were made by measurement (`hdc-bench --kernels`, docs/benchmarks.md).
"""

from __future__ import annotations

import torch

from . import cpu
from .bits import WORD_BITS, pack_bits, popcount_words, unpack_bits

# Largest int8 operand (elements) unpacked at once on a GPU; bounds temporaries to a few hundred MB.
_GPU_UNPACK_ELEMENTS = 1 << 28


def _on_cpu(*tensors: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" for t in tensors)


def int8_dot_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """All-pairs dot products of int8 rows: a (Q, L), b (N, L) -> int32 (Q, N)."""
    if a.shape[0] == 0 or b.shape[0] == 0:
        return torch.zeros((a.shape[0], b.shape[0]), dtype=torch.int32, device=a.device)
    if a.device.type == "cuda":
        return _cuda_int_mm(a, b)
    return _int8_gemm(_pad_rows(a, 17), b.t().contiguous())[: a.shape[0]]


def _int8_gemm(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    """int8 (M, K) x int8 (K, N) -> exact int32 (M, N): cuBLASLt on CUDA, oneDNN on CPU."""
    # Private op: torch 2.13 has no public int8 x int8 -> int32 GEMM (int8 matmul wraps on CPU, has no CUDA kernel).
    return torch._int_mm(a, b_t)


def _pad_rows(x: torch.Tensor, minimum: int) -> torch.Tensor:
    if x.shape[0] >= minimum:
        return x
    return torch.cat([x, x.new_zeros((minimum - x.shape[0], x.shape[1]))])


def _cuda_int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # cuBLASLt int8 GEMM wants m > 16 and k, n multiples of 8: pad with zero rows/columns, which add 0.
    length = a.shape[1]
    pad_k = (-length) % 8
    if pad_k:
        a = torch.nn.functional.pad(a, (0, pad_k))
        b = torch.nn.functional.pad(b, (0, pad_k))
    n = b.shape[0]
    pad_n = (-n) % 8
    if pad_n:
        b = torch.cat([b, b.new_zeros((pad_n, b.shape[1]))])
    out = _int8_gemm(_pad_rows(a.contiguous(), 17), b.t().contiguous())
    return out[: a.shape[0], :n]


def _bits_to_bipolar_int8(words: torch.Tensor) -> torch.Tensor:
    bits = unpack_bits(words, words.shape[-1] * WORD_BITS)
    return (1 - 2 * bits.to(torch.int8)).to(torch.int8)


def hamming_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """All-pairs Hamming distances of packed rows: a (Q, W), b (N, W) int64 -> int32 (Q, N)."""
    if _on_cpu(a, b):
        return cpu.hamming_matrix(a, b)
    if a.device.type == "cuda":
        length = a.shape[1] * WORD_BITS
        rows_per_chunk = max(1, _GPU_UNPACK_ELEMENTS // max(1, length))
        b_codes = _bits_to_bipolar_int8(b)
        parts = []
        for start in range(0, a.shape[0], rows_per_chunk):
            dots = int8_dot_matrix(_bits_to_bipolar_int8(a[start : start + rows_per_chunk]), b_codes)
            parts.append((length - dots) // 2)
        if not parts:
            return torch.zeros((0, b.shape[0]), dtype=torch.int32, device=a.device)
        return torch.cat(parts).to(torch.int32)
    return popcount_words(a.unsqueeze(1) ^ b.unsqueeze(0))


def bit_counts(words: torch.Tensor) -> torch.Tensor:
    """Per bit position, how many of the n rows have it set: (n, W) int64 -> (W*64,) int32."""
    if _on_cpu(words):
        return cpu.bit_counts(words)
    bits = unpack_bits(words, words.shape[-1] * WORD_BITS)
    return bits.sum(dim=0, dtype=torch.int32)


def bit_counts_batched(words: torch.Tensor) -> torch.Tensor:
    """bit_counts for each matrix of a batch: (B, n, W) int64 -> (B, W*64) int32."""
    if _on_cpu(words):
        out = torch.empty((words.shape[0], words.shape[-1] * WORD_BITS), dtype=torch.int32)
        for i in range(words.shape[0]):
            out[i] = cpu.bit_counts(words[i])
        return out
    bits = unpack_bits(words, words.shape[-1] * WORD_BITS)
    return bits.sum(dim=-2, dtype=torch.int32)


def int8_column_sum(x: torch.Tensor) -> torch.Tensor:
    """(n, D) int8 -> (D,) int32 column sums."""
    if _on_cpu(x):
        return cpu.int8_column_sum(x)
    return x.sum(dim=0, dtype=torch.int32)


def pack_sign_bits(x: torch.Tensor) -> torch.Tensor:
    """(n, D) int8 -> (n, ceil(D/64)) int64 words with bit k set where x[k] < 0."""
    if _on_cpu(x):
        return cpu.pack_sign_bits_int8(x)
    return pack_bits(x < 0)


def describe() -> dict[str, str]:
    """Which implementation each kernel uses on this machine (reported by hdc-bench and the worker)."""
    info = {"cpu": cpu.features()}
    if torch.cuda.is_available():
        info["cuda"] = f"int8 tensor-core GEMM (torch._int_mm) on {torch.cuda.get_device_name(0)}"
    return info
