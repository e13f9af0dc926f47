"""FHRR (Fourier HRR): complex phasors e^{i*theta}, one angle per dimension.

Storage: complex64 unit phasors. bind = element-wise product (angles add), inverse = conjugate (angles
negate), bundle = sum projected back onto the unit circle (each element keeps the angle of the sum; an
exactly zero sum becomes 1). similarity = real part of the Hermitian dot product; cosine = dot / D.
"""

from __future__ import annotations

import math

import torch

from .base import VSAModel

# How far from 1 a stored phasor's magnitude may be: float32 rounding of angle arithmetic stays far inside it.
UNIT_TOLERANCE = 1e-3


class FHRR(VSAModel):
    name = "FHRR"
    default_dtype = torch.complex64
    allowed_dtypes = (torch.complex64, torch.complex128)

    def random(
        self,
        shape: tuple[int, ...],
        dim: int,
        dtype: torch.dtype,
        generator: torch.Generator | None,
        device: torch.device,
    ) -> torch.Tensor:
        real_dtype = torch.float32 if dtype == torch.complex64 else torch.float64
        uniform = torch.rand((*shape, dim), dtype=real_dtype, generator=generator, device=device)
        angles = uniform * (2 * math.pi) - math.pi
        return torch.polar(torch.ones_like(angles), angles).to(dtype)

    def identity(self, shape: tuple[int, ...], dim: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return torch.ones((*shape, dim), dtype=dtype, device=device)

    def bind(self, a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
        return a * b

    def inverse(self, a: torch.Tensor, dim: int) -> torch.Tensor:
        return a.conj().resolve_conj()

    def multiset(self, data: torch.Tensor, dim: int) -> torch.Tensor:
        return self._to_unit(data.sum(dim=-2))

    @staticmethod
    def _to_unit(summed: torch.Tensor) -> torch.Tensor:
        magnitude = summed.abs()
        return torch.where(magnitude > 0, summed / magnitude.clamp_min(1e-30), torch.ones_like(summed))

    def dot(self, a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
        return (a @ b.conj().T).real

    def cosine(self, a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
        norms = a.abs().square().sum(-1).sqrt().unsqueeze(-1) * b.abs().square().sum(-1).sqrt().unsqueeze(0)
        return (self.dot(a, b, dim) / norms.clamp_min(1e-12)).float()

    def to_dense(self, data: torch.Tensor, dim: int) -> torch.Tensor:
        return data

    def from_dense(self, dense: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return dense.to(dtype)

    def quantize_sum(self, summed: torch.Tensor, count: int, dtype: torch.dtype) -> torch.Tensor:
        return self._to_unit(summed).to(dtype)

    def validate(self, data: torch.Tensor, dim: int, name: str = "data") -> None:
        """Refuses NaN, infinity and magnitudes off 1 by more than UNIT_TOLERANCE.

        Unit magnitudes bound every computation of the model: a dot product is at most D * (1 + tolerance)^2 and
        a bound pair keeps magnitude near 1, so no valid input can overflow.
        """
        magnitude = data.abs()
        if not bool(torch.isfinite(magnitude).all()):
            raise ValueError(f"{name}: FHRR hypervectors must hold unit-magnitude complex phasors, got NaN or infinity")
        if not bool(((magnitude - 1).abs() <= UNIT_TOLERANCE).all()):
            raise ValueError(
                f"{name}: FHRR hypervectors must hold unit-magnitude complex phasors (|z| within {UNIT_TOLERANCE} "
                f"of 1), got magnitudes from {float(magnitude.min()):.4g} to {float(magnitude.max()):.4g}"
            )
