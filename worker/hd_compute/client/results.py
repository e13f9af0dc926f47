"""The typed answers of the worker API (operations that answer hypervectors return hd.Hypervectors itself)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Similarities:
    """POST /v1/ops/similarity: (..., N) scores of each query against each of the others."""

    metric: str
    similarities: torch.Tensor


@dataclass(frozen=True)
class MemoryInfo:
    """An item memory's description; `keys` (one per item) only from memory_get, and only when items have keys."""

    name: str
    vsa: str
    dimension: int
    size: int
    keys: list[str] | None = None


@dataclass(frozen=True)
class Added:
    """POST /v1/memories/{name}/items: the new items' ids (insertion order) and the memory's size after the add."""

    name: str
    ids: torch.Tensor
    size: int


@dataclass(frozen=True)
class QueryResult:
    """Top-k items per query: (..., k) cosine similarities best first and item ids; keys flattened, when items have
    keys."""

    name: str
    k: int
    similarities: torch.Tensor
    indices: torch.Tensor
    keys: list[str] | None = None


@dataclass(frozen=True)
class ClassifierInfo:
    name: str
    vsa: str
    dimension: int
    num_classes: int
    fitted: bool
    samples_seen: int


@dataclass(frozen=True)
class Prediction:
    """(N,) labels and (N, num_classes) probabilities (softmax of cosine / temperature; not calibrated)."""

    name: str
    labels: torch.Tensor
    probabilities: torch.Tensor


@dataclass(frozen=True)
class Readiness:
    """GET /readyz: ready, or why not (a 503 is this answer, not an error)."""

    ready: bool
    reason: str | None = None


@dataclass(frozen=True)
class Health:
    """GET /health: healthy, degraded or unhealthy (503), with each check's own report."""

    status: str
    checks: dict[str, Any]
    timestamp: Any = None
