"""ItemMemory: a growable store of hypervectors with batched top-k similarity search.

Search runs in chunks of items (and of queries) sized so that the score matrix of one chunk stays under
`max_chunk_bytes`, so memory is bounded for millions of items whatever the batch of queries.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .device import resolve_device
from .errors import check_positive_int
from .functional import _check_compatible, _check_hv
from .hypervectors import Hypervectors
from .vsa import VSAModel, get_model


class SearchResult(NamedTuple):
    similarities: torch.Tensor  # (Q, k) float32 cosine similarity, best first
    indices: torch.Tensor  # (Q, k) int64 item ids


def _with_capacity(rows: torch.Tensor, used: int, needed: int) -> torch.Tensor:
    """`rows` itself when it has room for `needed` rows, else a copy of its first `used` rows with room to grow."""
    if needed <= rows.shape[0]:
        return rows
    grown = rows.new_empty((max(needed, 2 * rows.shape[0]), *rows.shape[1:]))
    grown[:used] = rows[:used]
    return grown


class ItemMemory:
    def __init__(
        self,
        dim: int,
        vsa: str | VSAModel = "MAP",
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        initial_capacity: int = 1024,
        max_chunk_bytes: int = 64 << 20,
    ):
        self.dim = check_positive_int(dim, "dim")
        self.vsa = get_model(vsa)
        self.device = resolve_device(device)
        self.dtype = self.vsa.storage_dtype(dtype)
        self.max_chunk_bytes = check_positive_int(max_chunk_bytes, "max_chunk_bytes")
        width = self.vsa.storage_width(dim)
        self._storage = torch.empty(
            (check_positive_int(initial_capacity, "initial_capacity"), width), dtype=self.dtype, device=self.device
        )
        # What the model searches fastest (MAP int8 on CPU: packed sign bits), kept in step with _storage;
        # None where that is the data itself.
        empty = self._storage[:0]
        form = self.vsa.search_form(empty, dim)
        self._search_forms = None if form is empty else form
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def vectors(self) -> Hypervectors:
        """All stored items, (N,) — a view, not a copy."""
        return Hypervectors(self._storage[: self._size], self.vsa, self.dim)

    def _empty_like_me(self) -> Hypervectors:
        return Hypervectors(self._storage[:0], self.vsa, self.dim)

    def add(self, items: Hypervectors) -> torch.Tensor:
        """Appends items (a single hypervector or a 1-D batch); returns their ids (int64)."""
        _check_compatible(items, self._empty_like_me(), "items", "memory")
        data = items.data.reshape(-1, items.data.shape[-1])
        needed = self._size + data.shape[0]
        self._storage = _with_capacity(self._storage, self._size, needed)
        self._storage[self._size : needed] = data
        if self._search_forms is not None:
            self._search_forms = _with_capacity(self._search_forms, self._size, needed)
            self._search_forms[self._size : needed] = self.vsa.search_form(data.contiguous(), self.dim)
        ids = torch.arange(self._size, needed, dtype=torch.int64)
        self._size = needed
        return ids

    def get(self, ids: torch.Tensor | list[int]) -> Hypervectors:
        ids = torch.as_tensor(ids, dtype=torch.int64)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self._size):
            raise IndexError(f"ids must be in [0, {self._size}), got values from {int(ids.min())} to {int(ids.max())}")
        return Hypervectors(self._storage[ids.to(self.device)], self.vsa, self.dim)

    def search(self, queries: Hypervectors, k: int = 1) -> SearchResult:
        """The k most similar items (cosine) for each query; queries (Q,) or a single hypervector."""
        _check_hv(queries, "queries")
        _check_compatible(queries, self._empty_like_me(), "queries", "memory")
        check_positive_int(k, "k")
        if self._size == 0:
            raise ValueError("the item memory is empty; add items before searching")
        if k > self._size:
            raise ValueError(f"k={k} is larger than the number of items ({self._size})")
        single = queries.data.dim() == 1
        q_all = queries.data.reshape(-1, queries.data.shape[-1])
        items = (self._storage if self._search_forms is None else self._search_forms)[: self._size]
        query_chunk = min(max(1, q_all.shape[0]), 4096)
        item_chunk = max(k, self.max_chunk_bytes // (4 * query_chunk))
        best_sims, best_ids = [], []
        for q_start in range(0, q_all.shape[0], query_chunk):
            q = q_all[q_start : q_start + query_chunk]
            sims_run = torch.full((q.shape[0], 0), float("-inf"), device=self.device)
            ids_run = torch.zeros((q.shape[0], 0), dtype=torch.int64, device=self.device)
            for i_start in range(0, self._size, item_chunk):
                chunk = items[i_start : i_start + item_chunk]
                sims = self.vsa.search_cosine(q, chunk, self.dim)
                top = sims.topk(min(k, chunk.shape[0]), dim=1)
                sims_run = torch.cat([sims_run, top.values], dim=1)
                ids_run = torch.cat([ids_run, top.indices + i_start], dim=1)
                if sims_run.shape[1] > k:
                    merged = sims_run.topk(k, dim=1)
                    sims_run, ids_run = merged.values, ids_run.gather(1, merged.indices)
            best_sims.append(sims_run)
            best_ids.append(ids_run)
        sims_out, ids_out = torch.cat(best_sims), torch.cat(best_ids)
        if single:
            return SearchResult(sims_out[0], ids_out[0])
        return SearchResult(sims_out.reshape(*queries.shape, k), ids_out.reshape(*queries.shape, k))

    def state_dict(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "vsa": self.vsa.name,
            "dtype": str(self.dtype).removeprefix("torch."),
            "vectors": self._storage[: self._size].cpu().clone(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], *, device: str | torch.device | None = None) -> "ItemMemory":
        vectors = state["vectors"]
        memory = cls(
            state["dim"],
            state["vsa"],
            device=device,
            dtype=getattr(torch, state["dtype"]),
            initial_capacity=max(1, vectors.shape[0]),
        )
        memory.add(Hypervectors(vectors.to(memory.device), memory.vsa, memory.dim, validate=True))
        return memory
