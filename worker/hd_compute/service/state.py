"""The worker's state (item memories and classifiers) and its snapshots under HDC_STATE_DIR.

Layout: <state_dir>/memories/<name>.pt and <state_dir>/classifiers/<name>.pt, one torch.save file per object
holding only tensors, numbers and strings (loaded with weights_only=True: nothing is unpickled).

A snapshot is written atomically: to a temporary file in the same directory, flushed and fsync'ed, renamed
over the old file with os.replace (atomic on POSIX), then the directory is fsync'ed so the rename itself is
durable. A kill -9 at any moment leaves either the old or the new file, never a torn one; leftover temporary
files are removed at the next start. When to snapshot is the server's choice (see server.py): after every
mutating request, before it is answered, optionally every HDC_SNAPSHOT_INTERVAL_SECONDS, and at shutdown.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from hd_compute.models import Centroid
from hd_compute.structures import ItemMemory

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
FORMAT_VERSION = 1
TMP_PREFIX = ".tmp-"


def check_name(name: Any, field_name: str = "name") -> str:
    """Names become file names: 1-128 letters, digits, '_', '.', '-', starting with a letter or digit."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(
            f"{field_name} must be 1-128 letters, digits, '_', '.' or '-' starting with a letter or digit, got {name!r}"
        )
    return name


@dataclass
class MemoryEntry:
    memory: ItemMemory
    keys: list[str] = field(default_factory=list)  # optional key per item ("" where none was given)


@dataclass
class ClassifierEntry:
    model: Centroid
    vsa: str
    samples_seen: int = 0


def atomic_write(path: str, write) -> None:
    """Calls write(file) on a temp file next to `path`, fsyncs it, renames it over `path`, fsyncs the directory."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".part", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(directory)


def fsync_dir(directory: str) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class StateStore:
    """Reads and writes the snapshots of one state directory (thread-safe)."""

    def __init__(self, state_dir: str):
        self.state_dir = os.path.abspath(state_dir)
        self.memories_dir = os.path.join(self.state_dir, "memories")
        self.classifiers_dir = os.path.join(self.state_dir, "classifiers")
        self._lock = threading.Lock()
        self.snapshots_written = 0

    def ensure_dirs(self) -> None:
        for d in (self.state_dir, self.memories_dir, self.classifiers_dir):
            os.makedirs(d, exist_ok=True)

    def _path(self, kind: str, name: str) -> str:
        return os.path.join(self.memories_dir if kind == "memory" else self.classifiers_dir, check_name(name) + ".pt")

    # -- writing ---------------------------------------------------------------------------------------------
    def save_memory(self, name: str, entry: MemoryEntry) -> None:
        state = entry.memory.state_dict()
        state = {"format": FORMAT_VERSION, "name": name, **state, "keys": list(entry.keys)}
        self._save(self._path("memory", name), state)

    def save_classifier(self, name: str, entry: ClassifierEntry) -> None:
        model = entry.model
        weights = None if model.weights is None else model.weights.detach().cpu().clone()
        state = {
            "format": FORMAT_VERSION,
            "name": name,
            "vsa": entry.vsa,
            "num_classes": model.num_classes,
            "dim": model.dim,
            "temperature": model.temperature,
            "samples_seen": entry.samples_seen,
            "weights": weights,
        }
        self._save(self._path("classifier", name), state)

    def _save(self, path: str, state: dict) -> None:
        with self._lock:
            atomic_write(path, lambda fh: torch.save(state, fh))
            self.snapshots_written += 1

    def delete(self, kind: str, name: str) -> None:
        path = self._path(kind, name)
        with self._lock:
            try:
                os.unlink(path)
            except FileNotFoundError:
                return
            fsync_dir(os.path.dirname(path))

    # -- reading ---------------------------------------------------------------------------------------------
    def cleanup_temp_files(self) -> list[str]:
        removed = []
        for d in (self.memories_dir, self.classifiers_dir):
            if not os.path.isdir(d):
                continue
            for entry in os.listdir(d):
                if entry.startswith(TMP_PREFIX):
                    os.unlink(os.path.join(d, entry))
                    removed.append(entry)
        return removed

    def load_all(self, device: torch.device) -> tuple[dict[str, MemoryEntry], dict[str, ClassifierEntry]]:
        """Loads every snapshot; a file that cannot be read stops the start-up with its path in the error."""
        self.ensure_dirs()
        self.cleanup_temp_files()
        memories: dict[str, MemoryEntry] = {}
        classifiers: dict[str, ClassifierEntry] = {}
        for kind, directory in (("memory", self.memories_dir), ("classifier", self.classifiers_dir)):
            for entry in sorted(os.listdir(directory)):
                if not entry.endswith(".pt"):
                    continue
                path = os.path.join(directory, entry)
                try:
                    state = torch.load(path, map_location="cpu", weights_only=True)
                    name = check_name(state["name"])
                    if kind == "memory":
                        memory = ItemMemory.from_state_dict(state, device=device)
                        keys = list(state.get("keys") or [])
                        memories[name] = MemoryEntry(memory, keys + [""] * (len(memory) - len(keys)))
                    else:
                        model = Centroid(
                            state["num_classes"], state["dim"], device=device, temperature=state["temperature"]
                        )
                        if state["weights"] is not None:
                            model.weights = state["weights"].to(model.device)
                        classifiers[name] = ClassifierEntry(model, state["vsa"], int(state.get("samples_seen", 0)))
                except Exception as exc:
                    raise RuntimeError(f"cannot load snapshot {path}: {exc}") from exc
        return memories, classifiers
