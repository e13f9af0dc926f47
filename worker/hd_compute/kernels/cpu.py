"""CPU kernels over torch tensors for packed binary and int8 hypervectors.

Binary hypervectors of D bits are packed LSB-first into ``W = ceil(D / 64)`` 64-bit words (bit ``i`` ->
word ``i // 64``, bit ``i % 64``), stored as int64 tensors of shape ``(n, W)``; padding bits of the last
word are zero.

The heavy lifting is done by the compiled extension :mod:`hd_compute.kernels._cpu` (AVX-512 / POPCNT /
portable paths chosen at run time). When it is missing, or ``HDC_DISABLE_NATIVE_KERNELS=1`` is set,
every function falls back to a numpy implementation and :func:`features` returns ``"numpy"``.

``reference_*`` functions are deliberately plain (bits unpacked with numpy) and exist for tests.
"""

from __future__ import annotations

import importlib
import os
from typing import Protocol, cast

import numpy as np
import torch  # first: the extension must find torch's OpenMP runtime (libgomp.so.1) already loaded

from .bits import num_words

__all__ = [
    "NATIVE_AVAILABLE",
    "features",
    "hamming_matrix",
    "bit_counts",
    "int8_column_sum",
    "pack_sign_bits_int8",
    "numpy_hamming_matrix",
    "numpy_bit_counts",
    "numpy_int8_column_sum",
    "numpy_pack_sign_bits_int8",
    "reference_hamming_matrix",
    "reference_bit_counts",
    "reference_int8_column_sum",
    "reference_pack_sign_bits_int8",
]


class _NativeKernels(Protocol):
    """The compiled extension's interface (cpu_kernels.c): raw data pointers and sizes, results written in place."""

    def features(self) -> str: ...
    def hamming_matrix(self, a: int, n_a: int, b: int, n_b: int, words: int, out: int, threads: int, /) -> None: ...
    def bit_counts(self, x: int, n: int, words: int, out: int, threads: int, /) -> None: ...
    def int8_column_sum(self, x: int, n: int, d: int, out: int, threads: int, /) -> None: ...
    def pack_sign_bits_int8(self, x: int, n: int, d: int, words: int, out: int, threads: int, /) -> None: ...


def _load_native() -> _NativeKernels | None:
    if os.environ.get("HDC_DISABLE_NATIVE_KERNELS", "").strip() in ("1", "true", "True", "yes"):
        return None
    try:
        return cast(_NativeKernels, importlib.import_module("hd_compute.kernels._cpu"))
    except ImportError:  # extension not built
        return None


_native = _load_native()

NATIVE_AVAILABLE: bool = _native is not None

# bound on the temporaries of the numpy hamming fallback
_NUMPY_CHUNK_BYTES = 64 * 1024 * 1024


def features() -> str:
    """Name of the code path in use: e.g. ``"avx512-vpopcntdq"``, ``"popcnt"``, ``"generic"`` or ``"numpy"``."""
    return _native.features() if _native is not None else "numpy"


def _threads() -> int:
    return max(1, int(torch.get_num_threads()))


# ---------------------------------------------------------------------------------------------
# argument checking
# ---------------------------------------------------------------------------------------------
def _check(t: object, name: str, dtype: torch.dtype) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of dtype {dtype}, got {type(t).__name__}")
    if t.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {t.dtype}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU, got device {t.device}")
    if t.requires_grad:
        t = t.detach()
    return t.contiguous()


def _np(t: torch.Tensor) -> np.ndarray:
    return t.numpy()


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------
def hamming_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise Hamming distances: int64 ``(n_a, W)`` x int64 ``(n_b, W)`` -> int32 ``(n_a, n_b)``."""
    a = _check(a, "a", torch.int64)
    b = _check(b, "b", torch.int64)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have the same number of words W, got {a.shape[1]} and {b.shape[1]}")
    n_a, w = a.shape
    n_b = b.shape[0]
    out = torch.empty((n_a, n_b), dtype=torch.int32)
    if _native is None:
        out.numpy()[...] = numpy_hamming_matrix(_np(a), _np(b))
        return out
    if n_a and n_b:
        _native.hamming_matrix(a.data_ptr(), n_a, b.data_ptr(), n_b, w, out.data_ptr(), _threads())
    return out


def bit_counts(x: torch.Tensor) -> torch.Tensor:
    """Per-bit-position counts of set bits over the rows: int64 ``(n, W)`` -> int32 ``(W * 64,)``."""
    x = _check(x, "x", torch.int64)
    n, w = x.shape
    out = torch.empty((w * 64,), dtype=torch.int32)
    if _native is None:
        out.numpy()[...] = numpy_bit_counts(_np(x))
        return out
    if w:
        _native.bit_counts(x.data_ptr(), n, w, out.data_ptr(), _threads())
    return out


def int8_column_sum(x: torch.Tensor) -> torch.Tensor:
    """Column sums of an int8 ``(n, d)`` matrix -> int32 ``(d,)`` (MAP majority bundling)."""
    x = _check(x, "x", torch.int8)
    n, d = x.shape
    out = torch.empty((d,), dtype=torch.int32)
    if _native is None:
        out.numpy()[...] = numpy_int8_column_sum(_np(x))
        return out
    if d:
        _native.int8_column_sum(x.data_ptr(), n, d, out.data_ptr(), _threads())
    return out


def pack_sign_bits_int8(x: torch.Tensor) -> torch.Tensor:
    """Pack sign bits of an int8 ``(n, d)`` matrix: bit k set iff ``x[:, k] < 0`` -> int64 ``(n, ceil(d/64))``."""
    x = _check(x, "x", torch.int8)
    n, d = x.shape
    w = num_words(d)
    out = torch.empty((n, w), dtype=torch.int64)
    if _native is None:
        out.numpy()[...] = numpy_pack_sign_bits_int8(_np(x))
        return out
    if n and w:
        _native.pack_sign_bits_int8(x.data_ptr(), n, d, w, out.data_ptr(), _threads())
    return out


# ---------------------------------------------------------------------------------------------
# numpy fallbacks (reasonably fast, bounded memory)
# ---------------------------------------------------------------------------------------------
def numpy_hamming_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a).view(np.uint64)
    b = np.ascontiguousarray(b).view(np.uint64)
    n_a, w = a.shape
    n_b = b.shape[0]
    out = np.zeros((n_a, n_b), dtype=np.int32)
    if n_a == 0 or n_b == 0 or w == 0:
        return out
    # temporaries per (rows x cols) block: rows*cols*wc*(8 bytes xor + 1 byte count)
    wc = min(w, 64)
    cells = max(1, _NUMPY_CHUNK_BYTES // (9 * wc))
    cols = min(n_b, max(1, int(cells**0.5)))
    rows = min(n_a, max(1, cells // cols))
    for k0 in range(0, w, wc):
        ak = a[:, k0 : k0 + wc]
        bk = b[:, k0 : k0 + wc]
        for i0 in range(0, n_a, rows):
            ai = ak[i0 : i0 + rows, None, :]
            for j0 in range(0, n_b, cols):
                x = np.bitwise_xor(ai, bk[None, j0 : j0 + cols, :])
                out[i0 : i0 + rows, j0 : j0 + cols] += np.bitwise_count(x).sum(axis=2, dtype=np.int32)
    return out


def numpy_bit_counts(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x)
    n, w = x.shape
    out = np.zeros(w * 64, dtype=np.int32)
    if n == 0 or w == 0:
        return out
    # chunk rows so the unpacked bits stay <= ~64 MB
    rows = max(1, _NUMPY_CHUNK_BYTES // (w * 64))
    for r0 in range(0, n, rows):
        bits = np.unpackbits(x[r0 : r0 + rows].view(np.uint8), axis=1, bitorder="little")
        out += bits.sum(axis=0, dtype=np.int32)
    return out


def numpy_int8_column_sum(x: np.ndarray) -> np.ndarray:
    sums: np.ndarray = np.asarray(x).sum(axis=0, dtype=np.int32)
    return sums


def numpy_pack_sign_bits_int8(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    n, d = x.shape
    w = num_words(d)
    padded = np.zeros((n, w * 64), dtype=np.uint8)
    padded[:, :d] = x < 0
    words: np.ndarray = np.packbits(padded, axis=1, bitorder="little").view(np.int64).reshape(n, w)
    return words


# ---------------------------------------------------------------------------------------------
# plain references (for tests)
# ---------------------------------------------------------------------------------------------
def _as_array(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _unpack(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """int64 (n, W) -> uint8 (n, W*64) bits, bit i of the hypervector at column i."""
    words = _as_array(x).astype(np.int64, copy=False)
    n, w = words.shape
    bits = np.zeros((n, w * 64), dtype=np.uint8)
    u = words.view(np.uint64)
    for k in range(64):
        bits[:, k::64] = ((u >> np.uint64(k)) & np.uint64(1)).astype(np.uint8)
    return bits


def reference_hamming_matrix(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> np.ndarray:
    ba, bb = _unpack(a), _unpack(b)
    distances: np.ndarray = (ba[:, None, :] != bb[None, :, :]).sum(axis=2).astype(np.int32)
    return distances


def reference_bit_counts(x: torch.Tensor | np.ndarray) -> np.ndarray:
    counts: np.ndarray = _unpack(x).sum(axis=0).astype(np.int32)
    return counts


def reference_int8_column_sum(x: torch.Tensor | np.ndarray) -> np.ndarray:
    sums: np.ndarray = _as_array(x).astype(np.int64).sum(axis=0).astype(np.int32)
    return sums


def reference_pack_sign_bits_int8(x: torch.Tensor | np.ndarray) -> np.ndarray:
    x = _as_array(x)
    n, d = x.shape
    w = num_words(d)
    out = np.zeros((n, w), dtype=np.uint64)
    for k in range(d):
        out[:, k // 64] |= (x[:, k] < 0).astype(np.uint64) << np.uint64(k % 64)
    return out.view(np.int64)
