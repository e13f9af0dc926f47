"""Argument checks shared by the whole engine.

Every check raises a TypeError or ValueError whose message names the argument and says what was expected,
so that a bad request can be reported back to its sender instead of producing a silently wrong result.
"""

from __future__ import annotations

from typing import Any

import torch


def check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return value


def check_non_negative_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def check_shape(value: Any, name: str) -> tuple[int, ...]:
    """A count (int) or a shape (tuple of ints) of hypervectors; zero-sized batches are allowed."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (check_non_negative_int(value, name),)
    if isinstance(value, (tuple, list, torch.Size)):
        return tuple(check_non_negative_int(v, f"{name}[{i}]") for i, v in enumerate(value))
    raise TypeError(f"{name} must be an int or a tuple of ints, got {type(value).__name__}")


def as_float_matrix(x: Any, name: str, *, num_features: int | None = None) -> torch.Tensor:
    """Validates encoder input: a non-empty 2-D real array (batch, features) of finite numbers."""
    if isinstance(x, torch.Tensor):
        tensor = x
    else:
        try:
            tensor = torch.as_tensor(x)
        except Exception as exc:  # numpy object arrays, ragged lists...
            raise TypeError(f"{name} must be a 2-D array of numbers (batch, features): {exc}") from None
    real = tensor.is_floating_point() or _is_integer(tensor.dtype)
    if tensor.dtype == torch.bool or tensor.is_complex() or not real:
        raise TypeError(f"{name} must hold real numbers, got dtype {tensor.dtype}")
    if tensor.dim() == 1:
        raise ValueError(
            f"{name} must be 2-D (batch, features), got shape {tuple(tensor.shape)}; use x[None] for one sample"
        )
    if tensor.dim() != 2:
        raise ValueError(f"{name} must be 2-D (batch, features), got shape {tuple(tensor.shape)}")
    if tensor.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(tensor.shape)}); at least one sample is expected")
    if num_features is not None and tensor.shape[1] != num_features:
        raise ValueError(f"{name} must have {num_features} features (columns), got {tensor.shape[1]}")
    if tensor.is_floating_point():
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            bad = (~finite).nonzero()[0].tolist()
            raise ValueError(f"{name} contains NaN or infinity (first at row {bad[0]}, column {bad[1]})")
    return tensor


def _is_integer(dtype: torch.dtype) -> bool:
    return dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
