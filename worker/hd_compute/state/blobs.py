"""Tensors as bytes in the database: the raw, C-ordered storage form (a BSC item at D = 10,000 is its 157
int64 words), with the dtype and row width kept beside the blob (the object's create parameters), never pickled."""

from __future__ import annotations

import torch


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"not a torch dtype: {name!r}")
    return dtype


def to_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.detach().cpu().contiguous().numpy().tobytes()


def from_bytes(data: bytes, dtype: torch.dtype, width: int) -> torch.Tensor:
    """(N, width) rows of `dtype` from `data`, as a CPU tensor over its own copy: the database hands out
    read-only bytes, and a tensor over a read-only buffer is one torch warns about (writing through it is
    undefined)."""
    if not data:
        return torch.empty((0, width), dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=dtype).reshape(-1, width)
