"""Bit packing for binary hypervectors.

Layout: bit i of a D-bit hypervector is bit (i % 64) of 64-bit word (i // 64), least significant bit first,
stored in torch.int64. Padding bits of the last word (when D is not a multiple of 64) are always zero: every
operation keeps that invariant, so popcounts never count them.
"""

from __future__ import annotations

import torch

WORD_BITS = 64


def num_words(dim: int) -> int:
    return (dim + WORD_BITS - 1) // WORD_BITS


def last_word_mask(dim: int) -> int | None:
    """Mask of the valid bits in the last word as a signed int64 value, or None when D % 64 == 0."""
    used = dim % WORD_BITS
    if used == 0:
        return None
    mask = (1 << used) - 1
    return mask - (1 << 64) if mask >= 1 << 63 else mask


def clear_padding(words: torch.Tensor, dim: int) -> torch.Tensor:
    """Zeroes the padding bits in place and returns the tensor."""
    mask = last_word_mask(dim)
    if mask is not None and words.shape[-1] > 0:
        words[..., -1] &= mask
    return words


_BYTE_WEIGHTS: dict[torch.device, torch.Tensor] = {}
_BIT_SHIFTS: dict[torch.device, torch.Tensor] = {}


def _byte_weights(device: torch.device) -> torch.Tensor:
    if device not in _BYTE_WEIGHTS:
        _BYTE_WEIGHTS[device] = torch.tensor([1 << b for b in range(8)], dtype=torch.uint8, device=device)
    return _BYTE_WEIGHTS[device]


def _bit_shifts(device: torch.device) -> torch.Tensor:
    if device not in _BIT_SHIFTS:
        _BIT_SHIFTS[device] = torch.arange(8, dtype=torch.uint8, device=device)
    return _BIT_SHIFTS[device]


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """(..., D) bool/0-1 tensor -> (..., ceil(D/64)) int64 words, padding zero."""
    dim = bits.shape[-1]
    words = num_words(dim)
    padded = torch.zeros((*bits.shape[:-1], words * WORD_BITS), dtype=torch.uint8, device=bits.device)
    padded[..., :dim] = bits.to(torch.uint8)
    grouped = padded.reshape(*bits.shape[:-1], words * 8, 8)
    packed_bytes = (grouped * _byte_weights(bits.device)).sum(dim=-1, dtype=torch.uint8)
    return packed_bytes.view(torch.int64) if packed_bytes.shape[-1] else packed_bytes.to(torch.int64)


def unpack_bits(words: torch.Tensor, dim: int) -> torch.Tensor:
    """(..., W) int64 words -> (..., D) bool tensor."""
    as_bytes = words.contiguous().view(torch.uint8)
    bits = (as_bytes.unsqueeze(-1) >> _bit_shifts(words.device)) & 1
    return bits.reshape(*words.shape[:-1], -1)[..., :dim].bool()


def random_words(
    shape: tuple[int, ...], dim: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Uniformly random packed bits (each bit independent, p=1/2), padding zero."""
    nbytes = num_words(dim) * 8
    raw = torch.randint(0, 256, (*shape, nbytes), dtype=torch.uint8, generator=generator, device=device)
    return clear_padding(raw.view(torch.int64), dim)


_POPCOUNT_LUT: dict[torch.device, torch.Tensor] = {}


def popcount_words(words: torch.Tensor) -> torch.Tensor:
    """Number of set bits along the last axis, any device (byte lookup table)."""
    if words.device not in _POPCOUNT_LUT:
        lut = torch.tensor([bin(b).count("1") for b in range(256)], dtype=torch.int32)
        _POPCOUNT_LUT[words.device] = lut.to(words.device)
    as_bytes = words.contiguous().view(torch.uint8).to(torch.int64)
    return _POPCOUNT_LUT[words.device][as_bytes].sum(dim=-1, dtype=torch.int32)
