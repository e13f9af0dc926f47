"""MAP (Multiply-Add-Permute): bipolar ±1 hypervectors.

Storage: int8 by default (1 byte per dimension, 4x less memory than float32), float32 on request. Every
element is exactly +1 or -1. bind = element-wise product (self-inverse), bundle = element-wise majority
(sign of the sum) with ties decided by a fixed tie-break vector, similarity = dot product (cosine = dot/D
because every vector has norm sqrt(D)).
"""

from __future__ import annotations

import torch

from ..kernels import dispatch
from .base import VSAModel, tiebreak_bipolar


class MAP(VSAModel):
    name = "MAP"
    default_dtype = torch.int8
    allowed_dtypes = (torch.int8, torch.float32)
    supports_hamming = True

    def random(
        self,
        shape: tuple[int, ...],
        dim: int,
        dtype: torch.dtype,
        generator: torch.Generator | None,
        device: torch.device,
    ) -> torch.Tensor:
        bits = torch.randint(0, 2, (*shape, dim), dtype=torch.int8, generator=generator, device=device)
        return (1 - 2 * bits).to(dtype)

    def identity(self, shape: tuple[int, ...], dim: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return torch.ones((*shape, dim), dtype=dtype, device=device)

    def bind(self, a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
        return a * b

    def inverse(self, a: torch.Tensor, dim: int) -> torch.Tensor:
        return a

    def multiset(self, data: torch.Tensor, dim: int) -> torch.Tensor:
        if data.dtype == torch.int8 and data.dim() == 2:
            summed = dispatch.int8_column_sum(data.contiguous())
        else:
            summed = data.sum(dim=-2, dtype=torch.int32 if data.dtype == torch.int8 else data.dtype)
        return self._majority(summed, dim, data.dtype)

    def _majority(self, summed: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
        tiebreak = tiebreak_bipolar(dim, summed.device).to(dtype)
        return torch.where(summed > 0, 1, torch.where(summed < 0, -1, tiebreak)).to(dtype)

    @staticmethod
    def _uses_sign_bits(data: torch.Tensor) -> bool:
        # Measured faster on CPU than int8 GEMM: ±1 -> sign bits, dot = D - 2 * hamming (docs/benchmarks.md).
        return data.dtype == torch.int8 and data.device.type == "cpu"

    def dot(self, a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
        if a.dtype == torch.int8 and b.dtype == torch.int8:
            if self._uses_sign_bits(a):
                return dim - 2 * dispatch.hamming_matrix(dispatch.pack_sign_bits(a), dispatch.pack_sign_bits(b))
            return dispatch.int8_dot_matrix(a, b)
        return a.float() @ b.float().T

    def search_form(self, data: torch.Tensor, dim: int) -> torch.Tensor:
        return dispatch.pack_sign_bits(data) if self._uses_sign_bits(data) else data

    def search_cosine(self, queries: torch.Tensor, items_form: torch.Tensor, dim: int) -> torch.Tensor:
        if self._uses_sign_bits(queries):
            distances = dispatch.hamming_matrix(dispatch.pack_sign_bits(queries), items_form)
            return 1.0 - (2.0 / dim) * distances.float()
        return self.cosine(queries, items_form, dim)

    def cosine(self, a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
        return self.dot(a, b, dim).float() / dim

    def hamming(self, a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
        # Equal elements = (D + dot) / 2 for ±1 vectors.
        return ((dim + self.dot(a, b, dim)) // 2).to(torch.int32)

    def to_dense(self, data: torch.Tensor, dim: int) -> torch.Tensor:
        return data.float()

    def from_dense(self, dense: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return dense.to(dtype)

    def quantize_sum(self, summed: torch.Tensor, count: int, dtype: torch.dtype) -> torch.Tensor:
        return self._majority(summed, summed.shape[-1], dtype)

    def validate(self, data: torch.Tensor, dim: int, name: str = "data") -> None:
        if not bool(((data == 1) | (data == -1)).all()):
            raise ValueError(f"{name}: MAP hypervectors must hold only +1 and -1 values")
