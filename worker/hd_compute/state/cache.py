"""The in-memory state a follower keeps: every live memory and classifier, built only by applying the log.

No I/O here: `StateCache` is a pure function of what is applied to it, which is what makes every follower that
applied the same versions hold the same state (the same floating-point operations in the same order, so the
same bits). Rules, each idempotent by version:
- an entry at or below the object's own version changes nothing (already applied, or covered by a segment);
- an entry of another generation than the cached object's changes nothing (a create starts a new generation, a
  delete ends only its own), so a delete-then-recreate of a name never mixes the two;
- an add appends rows to the cached ItemMemory (amortised O(rows), never a rewrite), and its first id must be
  the memory's size: anything else means the cache missed an entry, raised as `Diverged` (the follower then
  reloads from the store instead of serving a wrong memory).
Classifier weights are replaced by a new tensor rather than changed in place, so a reader holding the old
weights keeps a consistent tensor while an update is applied.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from hd_compute.hypervectors import Hypervectors
from hd_compute.models import Centroid
from hd_compute.structures import ItemMemory

from .blobs import dtype_from_name, from_bytes
from .schema import Entry, Kind, ObjectRow, Op, Segment

INITIAL_CAPACITY = 1024  # rows a memory created by the log has room for; it grows by doubling


class Diverged(Exception):
    """The cache cannot apply an entry consistently (it missed one); the follower reloads."""


@dataclass
class CachedMemory:
    memory: ItemMemory
    keys: list[str]  # one per item, "" where none was given
    generation: int
    version: int  # the newest entry applied to this memory


@dataclass
class CachedClassifier:
    model: Centroid
    vsa: str
    samples_seen: int
    generation: int
    version: int


@dataclass
class StateCache:
    device: torch.device
    memories: dict[str, CachedMemory] = field(default_factory=dict)
    classifiers: dict[str, CachedClassifier] = field(default_factory=dict)
    applied: int = 0  # every entry with a version <= applied is reflected here

    # -- bootstrap from compacted state ------------------------------------------------------------------------
    def load(self, obj: ObjectRow, object_segments: Iterable[Segment]) -> None:
        """A live object from its row and its segments (in id order), as of its compacted version."""
        if obj.kind == Kind.MEMORY:
            memory = self._new_memory(obj.meta, capacity=obj.size)
            keys: list[str] = []
            for segment in object_segments:
                self._append(memory, keys, segment.first_id, segment.count, segment.payload, segment.keys)
            self.memories[obj.name] = CachedMemory(memory, keys, obj.generation, obj.compacted_version)
        else:
            cached = self._new_classifier(obj.meta, obj.generation, obj.compacted_version)
            for segment in object_segments:
                cached.samples_seen = int(segment.meta.get("samples_seen", 0))
                if segment.payload is not None:
                    cached.model.weights = self._weights(cached.model, segment.payload, segment.meta["dtype"])
            self.classifiers[obj.name] = cached

    # -- the log ---------------------------------------------------------------------------------------------
    def apply(self, entry: Entry) -> None:
        if entry.kind == Kind.MEMORY:
            self._apply_memory(entry)
        else:
            self._apply_classifier(entry)
        self.applied = max(self.applied, entry.version)

    def _apply_memory(self, entry: Entry) -> None:
        cached = self.memories.get(entry.name)
        if entry.op == Op.CREATE:
            if cached is None or cached.generation < entry.generation:
                self.memories[entry.name] = CachedMemory(
                    self._new_memory(entry.meta), [], entry.generation, entry.version
                )
            return
        if cached is None or cached.generation != entry.generation or entry.version <= cached.version:
            return
        if entry.op == Op.DELETE:
            del self.memories[entry.name]
        elif entry.op == Op.ADD:
            self._append(cached.memory, cached.keys, entry.first_id, entry.count, entry.payload, entry.keys)
            cached.version = entry.version
        else:
            raise Diverged(f"memory entry {entry.version} has op {entry.op}")

    def _apply_classifier(self, entry: Entry) -> None:
        cached = self.classifiers.get(entry.name)
        if entry.op == Op.CREATE:
            if cached is None or cached.generation < entry.generation:
                self.classifiers[entry.name] = self._new_classifier(entry.meta, entry.generation, entry.version)
            return
        if cached is None or cached.generation != entry.generation or entry.version <= cached.version:
            return
        if entry.op == Op.DELETE:
            del self.classifiers[entry.name]
            return
        if entry.payload is None:
            raise Diverged(f"classifier entry {entry.version} ({entry.op}) has no weights")
        weights = self._weights(cached.model, entry.payload, entry.meta["dtype"])
        current = cached.model.weights
        if entry.op == Op.FIT_FULL or current is None:
            cached.model.weights = weights
        else:
            cached.model.weights = current + weights.to(current.dtype)
        cached.samples_seen = entry.count if entry.op == Op.FIT_FULL else cached.samples_seen + entry.count
        cached.version = entry.version

    # -- building blocks -------------------------------------------------------------------------------------
    def _new_memory(self, meta: dict[str, Any], capacity: int = INITIAL_CAPACITY) -> ItemMemory:
        return ItemMemory(
            int(meta["dim"]),
            meta["vsa"],
            device=self.device,
            dtype=dtype_from_name(meta["dtype"]),
            initial_capacity=max(1, capacity),
        )

    def _new_classifier(self, meta: dict[str, Any], generation: int, version: int) -> CachedClassifier:
        model = Centroid(
            int(meta["num_classes"]), int(meta["dim"]), device=self.device, temperature=float(meta["temperature"])
        )
        return CachedClassifier(model, meta["vsa"], 0, generation, version)

    def _append(
        self,
        memory: ItemMemory,
        keys: list[str],
        first_id: int,
        count: int,
        payload: bytes | None,
        item_keys: list[str] | None,
    ) -> None:
        if first_id != len(memory):
            raise Diverged(f"items from id {first_id} arrive at a memory of {len(memory)} items")
        rows = from_bytes(payload or b"", memory.dtype, memory.vsa.storage_width(memory.dim))
        if rows.shape[0] != count:
            raise Diverged(f"an add of {count} items holds {rows.shape[0]} rows")
        memory.add(Hypervectors(rows.to(memory.device), memory.vsa, memory.dim))
        keys.extend(item_keys if item_keys is not None else [""] * count)

    def _weights(self, model: Centroid, payload: bytes, dtype: str) -> torch.Tensor:
        return from_bytes(payload, dtype_from_name(dtype), model.dim).to(self.device)
