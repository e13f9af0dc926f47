"""Encoders: feature vectors (batch, features) -> hypervectors.

IDLevelEncoder: each feature f has a random ID hypervector, each quantized value a level hypervector; a sample
is the bundle of bind(ID_f, level(x_f)) over its features. torchhd's version builds a batch x features x D
tensor first; this one accumulates over chunks of features, so its temporaries stay under `max_chunk_bytes`
whatever the number of features.

RandomProjectionEncoder: x @ R with a fixed Gaussian matrix R (features x D), then quantized per model (sign
for MAP/BSC, normalized for HRR, e^{i*angle} for FHRR).

Both return Hypervectors (quantize=True, the default) or the dense pre-quantization tensor (quantize=False),
which keeps more information for a Centroid classifier.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .device import resolve_device
from .errors import as_float_matrix, check_positive_int
from .functional import level, random
from .hypervectors import Hypervectors
from .kernels import dispatch
from .vsa import VSAModel, get_model


class IDLevelEncoder:
    def __init__(
        self,
        num_features: int,
        dim: int,
        vsa: str | VSAModel = "MAP",
        *,
        levels: int = 100,
        low: float = 0.0,
        high: float = 1.0,
        device: str | torch.device | None = None,
        seed: int | None = 0,
        max_chunk_bytes: int = 64 << 20,
    ):
        self.num_features = check_positive_int(num_features, "num_features")
        self.dim = check_positive_int(dim, "dim")
        self.levels = check_positive_int(levels, "levels")
        if not (math.isfinite(low) and math.isfinite(high) and high > low):
            raise ValueError(f"low and high must be finite with high > low, got low={low}, high={high}")
        self.low, self.high = float(low), float(high)
        self.vsa = get_model(vsa)
        self.device = resolve_device(device)
        self.max_chunk_bytes = check_positive_int(max_chunk_bytes, "max_chunk_bytes")
        self.ids = random(num_features, dim, self.vsa, seed=seed).to(self.device)
        self.level_vectors = level(levels, dim, self.vsa, seed=None if seed is None else seed + 1).to(self.device)
        dense_dtype = torch.complex64 if self.vsa.name == "FHRR" else torch.float32
        self._dense_bytes = torch.empty((), dtype=dense_dtype).element_size()
        # MAP and BSC encode through packed bits: ±1 products are XORs of sign bits and a sum of n ±1 values is
        # n - 2 * (number of -1s), counted by the popcount kernels 64 dimensions per word.
        self._binary = self.vsa.name in ("MAP", "BSC")
        if self._binary:
            self._id_words = self._as_words(self.ids)
            self._level_words = self._as_words(self.level_vectors)

    @staticmethod
    def _as_words(hv: Hypervectors) -> torch.Tensor:
        if hv.vsa.name == "BSC":
            return hv.data
        return dispatch.pack_sign_bits(hv.data.to(torch.int8))

    def level_indices(self, x: torch.Tensor) -> torch.Tensor:
        """Quantizes values into level indices (values outside [low, high] take the end levels)."""
        scaled = (x.to(torch.float64) - self.low) / (self.high - self.low) * (self.levels - 1)
        return scaled.round().clamp(0, self.levels - 1).to(torch.int64)

    def _features_per_chunk(self, batch: int) -> int:
        per_feature = batch * self.dim * self._dense_bytes
        return max(1, min(self.num_features, self.max_chunk_bytes // max(1, per_feature)))

    def encode(self, x: Any, *, quantize: bool = True) -> Hypervectors | torch.Tensor:
        features = as_float_matrix(x, "x", num_features=self.num_features)
        indices = self.level_indices(features).to(self.device)
        summed = self._encode_binary(indices) if self._binary else self._encode_dense(indices)
        if not quantize:
            return summed
        data = self.vsa.quantize_sum(summed, self.num_features, self.vsa.default_dtype)
        return Hypervectors(data, self.vsa, self.dim)

    def _encode_binary(self, indices: torch.Tensor) -> torch.Tensor:
        batch = indices.shape[0]
        words = self._id_words.shape[-1]
        samples_per_chunk = max(1, self.max_chunk_bytes // (self.num_features * words * 8))
        summed = torch.empty((batch, self.dim), dtype=torch.float32, device=self.device)
        for start in range(0, batch, samples_per_chunk):
            bound = self._level_words[indices[start : start + samples_per_chunk]] ^ self._id_words  # (b, F, W)
            minus_ones = dispatch.bit_counts_batched(bound)[:, : self.dim]
            summed[start : start + samples_per_chunk] = self.num_features - 2 * minus_ones
        return summed

    def _encode_dense(self, indices: torch.Tensor) -> torch.Tensor:
        chunk = self._features_per_chunk(indices.shape[0])
        starts = range(0, self.num_features, chunk)
        summed = self._dense_part(indices, starts[0], chunk)
        for start in starts[1:]:
            summed = summed + self._dense_part(indices, start, chunk)
        return summed

    def _dense_part(self, indices: torch.Tensor, start: int, chunk: int) -> torch.Tensor:
        """The dense sum of bind(ID_f, level(x_f)) over features start .. start + chunk - 1."""
        stop = min(start + chunk, self.num_features)
        values = self.level_vectors.data[indices[:, start:stop]]  # (batch, chunk, width)
        bound = self.vsa.bind(self.ids.data[start:stop], values, self.dim)
        return self.vsa.to_dense(bound, self.dim).sum(dim=1)

    __call__ = encode


class RandomProjectionEncoder:
    def __init__(
        self,
        num_features: int,
        dim: int,
        vsa: str | VSAModel = "MAP",
        *,
        device: str | torch.device | None = None,
        seed: int | None = 0,
    ):
        self.num_features = check_positive_int(num_features, "num_features")
        self.dim = check_positive_int(dim, "dim")
        self.vsa = get_model(vsa)
        self.device = resolve_device(device)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.projection = torch.randn((num_features, dim), generator=generator).to(self.device)

    def encode(self, x: Any, *, quantize: bool = True) -> Hypervectors | torch.Tensor:
        features = as_float_matrix(x, "x", num_features=self.num_features).to(self.device, torch.float32)
        projected = features @ self.projection
        # Finite norms mean finite projections, and HRR's normalisation below cannot overflow.
        norms: torch.Tensor = torch.linalg.vector_norm(projected, dim=1, keepdim=True)
        if not bool(torch.isfinite(norms).all()):
            row = int((~torch.isfinite(norms[:, 0])).nonzero()[0])
            raise ValueError(f"x holds values too large to encode: the projection of row {row} overflows float32")
        if not quantize:
            return projected
        if self.vsa.name == "HRR":
            return Hypervectors(projected / norms.clamp_min(1e-12), self.vsa, self.dim)
        if self.vsa.name == "FHRR":
            return Hypervectors(torch.polar(torch.ones_like(projected), projected), self.vsa, self.dim)
        quantized = self.vsa.quantize_sum(projected, self.num_features, self.vsa.default_dtype)
        return Hypervectors(quantized, self.vsa, self.dim)

    __call__ = encode
