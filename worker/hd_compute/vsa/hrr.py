"""HRR (Holographic Reduced Representations): real vectors with i.i.d. N(0, 1/D) elements.

Storage: float32 (float64 on request). bind = circular convolution computed with the real FFT,
unbind = binding with the approximate inverse (the involution x*[i] = x[-i mod D]), so unbind(bind(a, b), b)
is a noisy copy of a (recovered by cleanup). bundle = sum. similarity = dot / cosine.

permute is a fixed pseudo-random permutation of the dimensions (applied `shifts` times), not a cyclic shift:
a cyclic shift commutes with circular convolution (roll(a) * b == roll(a * b)), so sequences and n-grams
built with it would not encode order at all.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from .base import VSAModel

PERMUTATION_SEED = 0x9E3779B9


def max_squared_norm(dtype: torch.dtype, dim: int) -> float:
    """The largest squared norm an HRR hypervector of `dtype` and dimension `dim` may have:
    finfo.max / (8 * dim**2).

    Reason: circular convolution multiplies spectra whose coefficients reach sqrt(D) * |x|, so binding two
    hypervectors forms products up to D * |a| * |b|, and the inverse FFT sums them to at most D * |a| * |b|
    (Cauchy-Schwarz and Parseval) before it divides by D: in exact arithmetic 2 * D * |x|^2 finite would do.
    The FFT of a length with a large prime factor runs through a convolution of about 2 * D terms (Bluestein's
    algorithm), whose intermediate sums can exceed that by a factor of order D; hypothesis found such a case at
    the old bound of finfo.max / (2 * D). A further factor of 4 * D covers them, and squared norms, dot products,
    cosines and the results of bind and unbind of any two valid hypervectors stay finite. Random HRR hypervectors
    (elements N(0, 1/D)) have squared norms near 1, far below the bound at any dimension. Sums of many
    hypervectors (bundles) can exceed it; they are checked again when they come back as input.
    """
    return torch.finfo(dtype).max / (8 * dim * dim)


@lru_cache(maxsize=256)
def permutation_power(dim: int, shifts: int, device: torch.device) -> torch.Tensor:
    """Index tensor of the fixed permutation of `dim` elements applied `shifts` times (negative: inverse)."""
    generator = torch.Generator().manual_seed(PERMUTATION_SEED + dim)
    base = torch.randperm(dim, generator=generator)
    if shifts < 0:
        inverse = torch.empty_like(base)
        inverse[base] = torch.arange(dim)
        base, shifts = inverse, -shifts
    result = torch.arange(dim)
    while shifts:
        if shifts & 1:
            result = result[base]
        base = base[base]
        shifts >>= 1
    return result.to(device)


class HRR(VSAModel):
    name = "HRR"
    default_dtype = torch.float32
    allowed_dtypes = (torch.float32, torch.float64)

    def random(
        self,
        shape: tuple[int, ...],
        dim: int,
        dtype: torch.dtype,
        generator: torch.Generator | None,
        device: torch.device,
    ) -> torch.Tensor:
        return torch.randn((*shape, dim), dtype=dtype, generator=generator, device=device) / math.sqrt(dim)

    def identity(self, shape: tuple[int, ...], dim: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        out = torch.zeros((*shape, dim), dtype=dtype, device=device)
        out[..., 0] = 1
        return out

    def bind(self, a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
        spectrum: torch.Tensor = torch.fft.rfft(a, dim=-1) * torch.fft.rfft(b, dim=-1)
        convolution: torch.Tensor = torch.fft.irfft(spectrum, n=dim, dim=-1)
        return convolution

    def inverse(self, a: torch.Tensor, dim: int) -> torch.Tensor:
        return torch.roll(torch.flip(a, dims=(-1,)), shifts=1, dims=-1)

    def multiset(self, data: torch.Tensor, dim: int) -> torch.Tensor:
        return data.sum(dim=-2)

    def permute(self, data: torch.Tensor, shifts: int, dim: int) -> torch.Tensor:
        return data[..., permutation_power(dim, shifts, data.device)]

    def dot(self, a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
        return a @ b.T

    def cosine(self, a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
        norms = a.square().sum(-1).sqrt().unsqueeze(-1) * b.square().sum(-1).sqrt().unsqueeze(0)
        return (self.dot(a, b, dim) / norms.clamp_min(1e-12)).float()

    def to_dense(self, data: torch.Tensor, dim: int) -> torch.Tensor:
        return data

    def from_dense(self, dense: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return dense.to(dtype)

    def quantize_sum(self, summed: torch.Tensor, count: int, dtype: torch.dtype) -> torch.Tensor:
        return summed.to(dtype)

    def validate(self, data: torch.Tensor, dim: int, name: str = "data") -> None:
        """Refuses NaN, infinity and any hypervector whose squared norm exceeds `max_squared_norm`.

        One reduction (the norms) finds all three: a NaN or infinite element makes its norm non-finite.
        """
        limit = math.sqrt(max_squared_norm(data.dtype, dim))
        norms: torch.Tensor = torch.linalg.vector_norm(data, dim=-1)
        if bool((norms <= limit).all()):
            return
        dtype = str(data.dtype).removeprefix("torch.")
        if not bool(torch.isfinite(data).all()):
            raise ValueError(f"{name}: HRR hypervectors must hold finite numbers, got NaN or infinity in {dtype}")
        raise ValueError(
            f"{name}: HRR hypervectors must hold finite numbers with a norm of at most {limit:.4g} in {dtype} at "
            f"dimension {dim} (binding and similarity would overflow), got {float(norms.max()):.4g}"
        )
