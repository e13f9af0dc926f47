"""Import of the snapshot files a worker wrote before the state store (HDC_STATE_DIR/memories/<name>.pt and
classifiers/<name>.pt, read with torch.load(weights_only=True): tensors, numbers and strings only).

Once and whole: the import runs only into an empty store (head version 0, checked under the head row's lock, so
of several replicas starting at once exactly one imports) and writes every object in one transaction, so a crash
in the middle leaves an empty store that the next start imports again; nothing is half-imported or imported
twice. The files are left where they are. A file that cannot be read stops the import with its path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from sqlalchemy import select

from hd_compute.hypervectors import Hypervectors
from hd_compute.vsa import get_model

from .compaction import SEGMENT_BYTES
from .schema import Kind, head
from .store import StateStore
from .writes import Transaction

SNAPSHOT_DIRS = {Kind.MEMORY: "memories", Kind.CLASSIFIER: "classifiers"}
SNAPSHOT_SUFFIX = ".pt"


@dataclass
class ImportResult:
    version: int = 0  # the state version after the import (0: nothing imported)
    memories: list[str] = field(default_factory=list)
    classifiers: list[str] = field(default_factory=list)
    skipped: str | None = None  # why nothing was imported


def snapshot_files(state_dir: str) -> list[tuple[Kind, str]]:
    """(kind, path) of every snapshot file under `state_dir`, in name order."""
    found = []
    for kind, sub in SNAPSHOT_DIRS.items():
        directory = os.path.join(state_dir, sub)
        if os.path.isdir(directory):
            found += [
                (kind, os.path.join(directory, f))
                for f in sorted(os.listdir(directory))
                if f.endswith(SNAPSHOT_SUFFIX) and not f.startswith(".")
            ]
    return found


def import_snapshot_files(store: StateStore, state_dir: str) -> ImportResult:
    files = snapshot_files(state_dir)
    if not files:
        return ImportResult(skipped=f"no snapshot files under {state_dir}")
    result = ImportResult()
    with store.transaction() as tx:
        version = tx.conn.execute(select(head.c.version).where(head.c.id == 1).with_for_update()).scalar_one()
        if version != 0:
            return ImportResult(skipped=f"the store is not empty (state version {version})")
        for kind, path in files:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                if kind == Kind.MEMORY:
                    result.memories.append(_import_memory(tx, state))
                else:
                    result.classifiers.append(_import_classifier(tx, state))
            except Exception as exc:
                raise RuntimeError(f"cannot import snapshot {path}: {exc}") from exc
        result.version = tx.committed[-1].version if tx.committed else 0
    store.compact_all()
    return result


def _import_memory(tx: Transaction, state: dict[str, Any]) -> str:
    name, dim, model = state["name"], int(state["dim"]), get_model(state["vsa"])
    dtype = getattr(torch, state["dtype"])
    tx.create_memory(name, dim, model.name, dtype)
    vectors: torch.Tensor = state["vectors"]
    given: list[str] = list(state.get("keys") or [])
    keys = given + [""] * (vectors.shape[0] - len(given)) if any(given) else None
    row_bytes = max(1, model.storage_width(dim) * vectors.element_size())
    step = max(1, SEGMENT_BYTES // row_bytes)
    for start in range(0, vectors.shape[0], step):
        rows = Hypervectors(vectors[start : start + step], model, dim, validate=True)
        tx.add_items(name, rows, None if keys is None else keys[start : start + step])
    return str(name)


def _import_classifier(tx: Transaction, state: dict[str, Any]) -> str:
    name = state["name"]
    tx.create_classifier(name, int(state["num_classes"]), int(state["dim"]), state["vsa"], float(state["temperature"]))
    if state.get("weights") is not None:
        tx.load_weights(name, state["weights"], int(state.get("samples_seen", 0)))
    return str(name)
