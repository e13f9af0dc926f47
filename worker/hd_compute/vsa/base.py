"""The contract every VSA model implements.

A model works on *storage tensors*: torch tensors whose last axis holds one hypervector (D elements, or
ceil(D/64) words for packed BSC) and whose leading axes are a batch. Models do no argument checking of
their own; `hd_compute.functional` validates and then calls them.
"""

from __future__ import annotations

import abc
from functools import lru_cache

import torch

TIEBREAK_SEED = 0x5EED_71E


@lru_cache(maxsize=64)
def tiebreak_bipolar(dim: int, device: torch.device) -> torch.Tensor:
    """A fixed pseudo-random ±1 vector (int8) that decides majority ties, the same in every process.

    Ties (equal votes) take this vector's value, so a bundle of an even number of inputs is as close to each
    input as a bundle of an odd number, and results are reproducible everywhere.
    """
    generator = torch.Generator().manual_seed(TIEBREAK_SEED + dim)
    bits = torch.randint(0, 2, (dim,), dtype=torch.int8, generator=generator)
    return (1 - 2 * bits).to(device)


class VSAModel(abc.ABC):
    name: str
    default_dtype: torch.dtype
    allowed_dtypes: tuple[torch.dtype, ...]
    supports_hamming = False

    def storage_width(self, dim: int) -> int:
        """Length of the last storage axis for dimension `dim`."""
        return dim

    def storage_dtype(self, dtype: torch.dtype | None) -> torch.dtype:
        if dtype is None:
            return self.default_dtype
        if dtype not in self.allowed_dtypes:
            allowed = ", ".join(str(d).removeprefix("torch.") for d in self.allowed_dtypes)
            raise TypeError(f"dtype for {self.name} must be one of {allowed}, got {dtype}")
        return dtype

    @abc.abstractmethod
    def random(
        self,
        shape: tuple[int, ...],
        dim: int,
        dtype: torch.dtype,
        generator: torch.Generator | None,
        device: torch.device,
    ) -> torch.Tensor: ...

    @abc.abstractmethod
    def identity(self, shape: tuple[int, ...], dim: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor: ...

    @abc.abstractmethod
    def bind(self, a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor: ...

    @abc.abstractmethod
    def inverse(self, a: torch.Tensor, dim: int) -> torch.Tensor: ...

    def unbind(self, a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
        return self.bind(a, self.inverse(b, dim), dim)

    @abc.abstractmethod
    def multiset(self, data: torch.Tensor, dim: int) -> torch.Tensor:
        """Bundles the hypervectors along axis -2 of `data` ((..., n, width) -> (..., width))."""

    def permute(self, data: torch.Tensor, shifts: int, dim: int) -> torch.Tensor:
        """Cyclic shift by `shifts`; reduced modulo D first, which is the same shift and fits torch's int64."""
        return torch.roll(data, shifts=shifts % dim, dims=-1)

    @abc.abstractmethod
    def dot(self, a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
        """All-pairs dot products: a (Q, width), b (N, width) -> (Q, N)."""

    @abc.abstractmethod
    def cosine(self, a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
        """All-pairs cosine similarity: a (Q, width), b (N, width) -> (Q, N) float32."""

    def search_form(self, data: torch.Tensor, dim: int) -> torch.Tensor:
        """The form an item memory keeps next to its items for fast repeated search (default: the data)."""
        return data

    def search_cosine(self, queries: torch.Tensor, items_form: torch.Tensor, dim: int) -> torch.Tensor:
        """cosine(queries, items) with the items given in search_form: (Q, width) x (N, ...) -> (Q, N)."""
        return self.cosine(queries, items_form, dim)

    def hamming(self, a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
        raise TypeError(f"hamming_similarity is defined for MAP and BSC hypervectors, not {self.name}")

    @abc.abstractmethod
    def to_dense(self, data: torch.Tensor, dim: int) -> torch.Tensor:
        """Element-per-dimension view: ±1 float for MAP/BSC, real for HRR, complex for FHRR."""

    @abc.abstractmethod
    def from_dense(self, dense: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Inverse of to_dense for valid values (±1 for MAP/BSC, unit phasors for FHRR)."""

    @abc.abstractmethod
    def quantize_sum(self, summed: torch.Tensor, count: int, dtype: torch.dtype) -> torch.Tensor:
        """Turns a dense sum of `count` hypervectors (the accumulator of an encoder) into a hypervector."""

    @abc.abstractmethod
    def validate(self, data: torch.Tensor, dim: int, name: str = "data") -> None:
        """Raises ValueError, naming the argument `name`, when `data` holds values that are not hypervectors of
        this model, or values so large that the model's own computations on them would overflow."""

    def select(self, mask: torch.Tensor, if_true: torch.Tensor, if_false: torch.Tensor) -> torch.Tensor:
        """Per-dimension choice between two storage tensors; mask is a dense (..., D) bool tensor."""
        return torch.where(mask, if_true, if_false)

    def __repr__(self) -> str:
        return self.name
