"""What a classifier fit writes to the log, computed with the engine's Centroid on the samples' own device.

- A non-adaptive partial fit adds each sample to its class's prototype, so its effect is the per-class sum of
  the batch: a delta that commutes with every other delta, computed without reading the current weights.
- A full fit (plain or adaptive) starts from zero, so its result does not depend on the current weights either.
- An adaptive partial fit (OnlineHD) weighs each sample by how the *current* prototypes classify it, so it is
  computed from the current weights (read under the classifier's lock) and written as a new full version.
The weights leave this module on the CPU, in the storage form the log keeps.
"""

from __future__ import annotations

from typing import Any

import torch

from hd_compute.hypervectors import Hypervectors
from hd_compute.models import Centroid


def _model(meta: dict[str, Any], device: torch.device) -> Centroid:
    return Centroid(int(meta["num_classes"]), int(meta["dim"]), device=device, temperature=float(meta["temperature"]))


def _device_of(x: Any) -> torch.device:
    data = x.data if isinstance(x, Hypervectors) else x
    return data.device if isinstance(data, torch.Tensor) else torch.device("cpu")


def _weights(model: Centroid) -> torch.Tensor:
    if model.weights is None:  # Centroid creates its prototypes in partial_fit, so a fit always leaves them
        raise RuntimeError("the fit left no prototypes")
    return model.weights.detach().cpu()


def class_sums(meta: dict[str, Any], x: Any, y: Any) -> torch.Tensor:
    """The delta of a non-adaptive partial fit: (num_classes, dim) sums of the samples by label."""
    return _weights(_model(meta, _device_of(x)).partial_fit(x, y))


def full_fit(meta: dict[str, Any], x: Any, y: Any, *, epochs: int, adaptive: bool, lr: float) -> torch.Tensor:
    """The weights of a fit from scratch (Centroid.fit)."""
    return _weights(_model(meta, _device_of(x)).fit(x, y, epochs=epochs, adaptive=adaptive, lr=lr))


def adaptive_step(meta: dict[str, Any], current: torch.Tensor | None, x: Any, y: Any, *, lr: float) -> torch.Tensor:
    """The weights after one adaptive partial fit from `current` (None: not fitted yet)."""
    model = _model(meta, _device_of(x))
    if current is not None:
        model.weights = current.to(model.device).clone()
    return _weights(model.partial_fit(x, y, adaptive=True, lr=lr))
