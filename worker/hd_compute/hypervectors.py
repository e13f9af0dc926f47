"""`Hypervectors`: a batch of hypervectors of one VSA model and dimension.

It pairs the storage tensor with what the tensor alone cannot say: the model and the dimension D (a packed BSC
tensor has ceil(D/64) words, not D elements). Leading axes are batch axes and index like a tensor's;
the last storage axis is never indexed by users.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from .device import resolve_device
from .errors import check_positive_int
from .vsa import VSAModel, get_model


class Hypervectors:
    __slots__ = ("data", "vsa", "dim")

    def __init__(self, data: torch.Tensor, vsa: str | VSAModel, dim: int, *, validate: bool = False):
        model = get_model(vsa)
        check_positive_int(dim, "dim")
        if not isinstance(data, torch.Tensor):
            raise TypeError(f"data must be a torch.Tensor, got {type(data).__name__}")
        if data.dim() < 1:
            raise ValueError("data must have at least one axis (the hypervector axis)")
        width = model.storage_width(dim)
        if data.shape[-1] != width:
            raise ValueError(
                f"data's last axis must have {width} elements for {model.name} with dim={dim}, got {data.shape[-1]}"
            )
        if data.dtype not in model.allowed_dtypes:
            allowed = ", ".join(str(d).removeprefix("torch.") for d in model.allowed_dtypes)
            raise TypeError(f"data for {model.name} must have dtype {allowed}, got {data.dtype}")
        if validate:
            model.validate(data, dim)
        self.data = data
        self.vsa = model
        self.dim = dim

    @classmethod
    def from_dense(cls, dense: Any, vsa: str | VSAModel, *, dtype: torch.dtype | None = None) -> "Hypervectors":
        """From the element-per-dimension form (±1 for MAP/BSC, reals for HRR, unit phasors for FHRR)."""
        model = get_model(vsa)
        dense = torch.as_tensor(dense)
        if dense.dim() < 1 or dense.shape[-1] == 0:
            raise ValueError(f"dense must have a non-empty last axis (the dimension), got shape {tuple(dense.shape)}")
        if model.name in ("MAP", "BSC") and not bool(((dense == 1) | (dense == -1)).all()):
            raise ValueError(f"dense values for {model.name} must be +1 or -1")
        if model.name == "FHRR" and not dense.is_complex():
            raise TypeError("dense values for FHRR must be complex phasors")
        data = model.from_dense(dense, model.storage_dtype(dtype))
        hv = cls(data, model, dense.shape[-1])
        model.validate(hv.data, hv.dim, "dense")
        return hv

    # --- tensor-like behaviour over the batch axes -------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        """Batch shape (without the hypervector axis)."""
        return self.data.shape[:-1]

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def dtype(self) -> torch.dtype:
        return self.data.dtype

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    def __len__(self) -> int:
        if self.data.dim() == 1:
            raise TypeError("len() of a single hypervector")
        return self.data.shape[0]

    def __getitem__(self, index: Any) -> "Hypervectors":
        if self.data.dim() == 1:
            raise IndexError("a single hypervector has no batch axis to index")
        if isinstance(index, tuple):
            if Ellipsis in index:
                raise IndexError("Ellipsis indexing is not supported; index the batch axes explicitly")
            if len(index) > self.data.dim() - 1:
                raise IndexError(f"too many indices for a batch of shape {tuple(self.shape)}")
        return Hypervectors(self.data[index], self.vsa, self.dim)

    def __iter__(self) -> Iterator[Hypervectors]:
        for i in range(len(self)):
            yield self[i]

    def to(self, device: str | torch.device) -> "Hypervectors":
        return Hypervectors(self.data.to(resolve_device(device)), self.vsa, self.dim)

    def clone(self) -> "Hypervectors":
        return Hypervectors(self.data.clone(), self.vsa, self.dim)

    def reshape(self, *shape: int) -> "Hypervectors":
        return Hypervectors(self.data.reshape(*shape, self.data.shape[-1]), self.vsa, self.dim)

    def dense(self) -> torch.Tensor:
        """Element-per-dimension tensor (..., D): ±1 float32 for MAP/BSC, reals for HRR, phasors for FHRR."""
        return self.vsa.to_dense(self.data, self.dim)

    def equal(self, other: "Hypervectors") -> bool:
        return (
            isinstance(other, Hypervectors)
            and other.vsa is self.vsa
            and other.dim == self.dim
            and other.data.shape == self.data.shape
            and bool(torch.equal(other.data, self.data.to(other.data.dtype)))
        )

    def __repr__(self) -> str:
        return (
            f"Hypervectors(vsa={self.vsa.name}, dim={self.dim}, shape={tuple(self.shape)}, "
            f"dtype={str(self.dtype).removeprefix('torch.')}, device={self.device})"
        )


def cat(items: list[Hypervectors], name: str = "items") -> Hypervectors:
    """Concatenates batches of the same model and dimension along the first batch axis."""
    if not items:
        raise ValueError(f"{name} must not be empty")
    first = items[0]
    for i, hv in enumerate(items):
        if not isinstance(hv, Hypervectors):
            raise TypeError(f"{name}[{i}] must be Hypervectors, got {type(hv).__name__}")
        if hv.vsa is not first.vsa or hv.dim != first.dim:
            raise ValueError(f"{name}[{i}] is {hv.vsa.name} dim={hv.dim}, expected {first.vsa.name} dim={first.dim}")
    return Hypervectors(torch.cat([hv.data for hv in items]), first.vsa, first.dim)
