"""Centroid: the classic HDC classifier, one prototype hypervector per class.

Samples come as Hypervectors or as dense (batch, D) tensors (e.g. an encoder's unquantized sums). Prototypes
are float sums of their class's samples (complex for FHRR); prediction is the most cosine-similar prototype.
`adaptive=True` applies the OnlineHD rule: a misclassified sample is added to its true class weighted by how
dissimilar it was, and subtracted from the wrongly predicted class weighted by how similar it was.
"""

from __future__ import annotations

from typing import Any

import torch

from .device import resolve_device
from .errors import check_positive_int
from .hypervectors import Hypervectors


class Centroid:
    def __init__(
        self, num_classes: int, dim: int, *, device: str | torch.device | None = None, temperature: float = 0.05
    ):
        self.num_classes = check_positive_int(num_classes, "num_classes")
        self.dim = check_positive_int(dim, "dim")
        self.device = resolve_device(device)
        if not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        self.temperature = float(temperature)
        self.weights: torch.Tensor | None = None  # (num_classes, dim), created on the first fit

    # --- input handling ---------------------------------------------------------------------------------
    def _samples(self, x: Any, name: str = "x") -> torch.Tensor:
        if isinstance(x, Hypervectors):
            if x.dim != self.dim:
                raise ValueError(f"{name} has dim={x.dim}, the classifier expects {self.dim}")
            dense = x.dense()
        elif isinstance(x, torch.Tensor):
            dense = x
            if dense.dtype == torch.int8:
                dense = dense.float()
        else:
            raise TypeError(f"{name} must be Hypervectors or a (batch, dim) tensor, got {type(x).__name__}")
        if dense.dim() != 2 or dense.shape[1] != self.dim:
            raise ValueError(f"{name} must have shape (batch, {self.dim}), got {tuple(dense.shape)}")
        if dense.shape[0] == 0:
            raise ValueError(f"{name} is an empty batch")
        if not (dense.is_floating_point() or dense.is_complex()):
            dense = dense.float()
        if not bool(torch.isfinite(dense).all()):
            raise ValueError(f"{name} contains NaN or infinity")
        dense = dense.to(self.device)
        if self.weights is not None and dense.dtype != self.weights.dtype:
            dense = dense.to(self.weights.dtype)
        return dense

    def _labels(self, y: Any, batch: int) -> torch.Tensor:
        labels = torch.as_tensor(y)
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
            raise TypeError(f"y must hold integer class labels, got dtype {labels.dtype}")
        if labels.dim() != 1 or labels.shape[0] != batch:
            raise ValueError(f"y must have shape ({batch},) to match x, got {tuple(labels.shape)}")
        if int(labels.min()) < 0 or int(labels.max()) >= self.num_classes:
            raise ValueError(
                f"y must hold labels in [0, {self.num_classes}), got {int(labels.min())}..{int(labels.max())}"
            )
        return labels.to(self.device, torch.int64)

    # --- training ------------------------------------------------------------------------------------------
    def fit(self, x: Any, y: Any, *, epochs: int = 1, adaptive: bool = False, lr: float = 1.0) -> "Centroid":
        """Trains from scratch: one plain pass, then `epochs` adaptive (OnlineHD) passes when adaptive=True."""
        check_positive_int(epochs, "epochs")
        self.weights = None
        self.partial_fit(x, y)
        if adaptive:
            for _ in range(epochs):
                self.partial_fit(x, y, adaptive=True, lr=lr)
        return self

    def partial_fit(self, x: Any, y: Any, *, adaptive: bool = False, lr: float = 1.0) -> "Centroid":
        """Adds a batch to the prototypes (plain sum, or the OnlineHD update when adaptive=True)."""
        samples = self._samples(x)
        labels = self._labels(y, samples.shape[0])
        if self.weights is None:  # the first batch decides the prototypes' dtype (real, or complex for FHRR)
            self.weights = torch.zeros((self.num_classes, self.dim), dtype=samples.dtype, device=self.device)
        weights = self.weights
        if not adaptive:
            weights.index_add_(0, labels, samples)
            return self
        similarity = _cosine(samples, weights)
        predicted = similarity.argmax(dim=1)
        wrong = predicted != labels
        if not bool(wrong.any()):
            return self
        samples, labels, predicted, similarity = samples[wrong], labels[wrong], predicted[wrong], similarity[wrong]
        true_weight = lr * (1.0 - similarity.gather(1, labels.unsqueeze(1)))
        wrong_weight = lr * (similarity.gather(1, predicted.unsqueeze(1)) - 1.0)
        weights.index_add_(0, labels, true_weight.to(samples.dtype) * samples)
        weights.index_add_(0, predicted, wrong_weight.to(samples.dtype) * samples)
        return self

    # --- inference ----------------------------------------------------------------------------------------
    def similarity(self, x: Any) -> torch.Tensor:
        """Cosine similarity of each sample to each class prototype, (batch, num_classes)."""
        weights = self.weights
        if weights is None:
            raise RuntimeError("the classifier is not fitted; call fit or partial_fit first")
        return _cosine(self._samples(x), weights)

    def predict(self, x: Any) -> torch.Tensor:
        return self.similarity(x).argmax(dim=1)

    def predict_proba(self, x: Any) -> torch.Tensor:
        """Softmax of the cosine similarities divided by `temperature`; rows sum to 1 (not calibrated)."""
        return torch.softmax(self.similarity(x) / self.temperature, dim=1)

    def score(self, x: Any, y: Any) -> float:
        predicted = self.predict(x)
        labels = self._labels(y, predicted.shape[0])
        return float((predicted == labels).float().mean())


def _cosine(samples: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each sample to each prototype, (batch, num_classes); real for FHRR too."""
    dots = _unit_rows(samples) @ _unit_rows(weights).conj().T
    return dots.real if dots.is_complex() else dots


def _unit_rows(rows: torch.Tensor) -> torch.Tensor:
    """Each row divided by its norm (a zero row stays zero), without overflow however large the row.

    A prototype is a sum of many samples, so its squared norm can overflow where each sample's does not; each
    row is first divided by its largest magnitude, which leaves its direction (all cosine needs) unchanged.
    """
    peak = rows.abs().amax(dim=1, keepdim=True)
    scaled = rows / peak.clamp_min(torch.finfo(peak.dtype).tiny)
    norms = scaled.abs().square().sum(dim=1, keepdim=True).sqrt()
    return scaled / norms.clamp_min(1.0)
