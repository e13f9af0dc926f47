"""Unit tests of the worker's snapshots (service/state.py) and its store of named entries (service/entries.py)."""

from __future__ import annotations

import os

import pytest
import torch

import hd_compute.functional as F
from hd_compute.models import Centroid
from hd_compute.service.codec import ApiError
from hd_compute.service.entries import NamedEntries
from hd_compute.service.state import ClassifierEntry, MemoryEntry, StateStore, atomic_write, check_name
from hd_compute.structures import ItemMemory

CPU = torch.device("cpu")


def _memory(vsa: str = "BSC", dim: int = 130, n: int = 5) -> MemoryEntry:
    memory = ItemMemory(dim, vsa, device=CPU)
    memory.add(F.random(n, dim, vsa, seed=3))
    return MemoryEntry(memory, [f"k{i}" if i % 2 else "" for i in range(n)])


@pytest.mark.parametrize("vsa", ["MAP", "BSC", "HRR", "FHRR"])
def test_a_memory_survives_save_and_load(tmp_path, vsa):
    store = StateStore(str(tmp_path))
    entry = _memory(vsa)
    store.save_memory("m1", entry)
    memories, classifiers = StateStore(str(tmp_path)).load_all(CPU)
    assert list(memories) == ["m1"] and classifiers == {}
    loaded = memories["m1"]
    assert loaded.keys == entry.keys
    assert len(loaded.memory) == len(entry.memory) and loaded.memory.vsa.name == vsa
    assert torch.equal(loaded.memory.vectors.data, entry.memory.vectors.data)


def test_classifiers_survive_save_and_load_fitted_or_not(tmp_path):
    store = StateStore(str(tmp_path))
    fitted = Centroid(3, 64, device=CPU, temperature=0.2)
    x = F.random(6, 64, "MAP", seed=1)
    fitted.fit(x, torch.tensor([0, 1, 2, 0, 1, 2]))
    store.save_classifier("fitted", ClassifierEntry(fitted, "MAP", samples_seen=6))
    store.save_classifier("empty", ClassifierEntry(Centroid(2, 64, device=CPU), "MAP"))
    _, classifiers = store.load_all(CPU)
    assert sorted(classifiers) == ["empty", "fitted"]
    assert classifiers["empty"].model.weights is None
    loaded = classifiers["fitted"]
    assert (loaded.samples_seen, loaded.model.temperature, loaded.vsa) == (6, 0.2, "MAP")
    assert torch.equal(loaded.model.weights, fitted.weights)


def test_a_failed_write_keeps_the_old_snapshot_and_leaves_no_temporary_file(tmp_path):
    path = str(tmp_path / "memories" / "m.pt")
    atomic_write(path, lambda fh: fh.write(b"old"))

    def torn(fh):
        fh.write(b"half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, torn)
    assert open(path, "rb").read() == b"old"
    assert os.listdir(tmp_path / "memories") == ["m.pt"]


def test_leftover_temporary_files_are_removed_at_load(tmp_path):
    store = StateStore(str(tmp_path))
    store.save_memory("m", _memory())
    leftover = tmp_path / "memories" / ".tmp-crashed.part"
    leftover.write_bytes(b"partial")
    memories, _ = store.load_all(CPU)
    assert list(memories) == ["m"] and not leftover.exists()


def test_an_unreadable_snapshot_stops_the_start_with_its_path(tmp_path):
    store = StateStore(str(tmp_path))
    store.ensure_dirs()
    bad = tmp_path / "classifiers" / "c.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(RuntimeError, match="c.pt"):
        store.load_all(CPU)


def test_delete_removes_the_snapshot_and_is_idempotent(tmp_path):
    store = StateStore(str(tmp_path))
    store.save_memory("m", _memory())
    store.delete("memory", "m")
    store.delete("memory", "m")
    assert store.load_all(CPU) == ({}, {})


@pytest.mark.parametrize("name", ["", "../etc", ".hidden", "a/b", "x" * 129, None, 7])
def test_names_that_are_not_plain_file_names_are_refused(name):
    with pytest.raises(ValueError, match="name must be"):
        check_name(name)


def test_named_entries_answer_404_and_409_naming_the_field():
    memories: NamedEntries[str] = NamedEntries("memory", "item memory")
    classifiers: NamedEntries[str] = NamedEntries("classifier", "classifier")
    with pytest.raises(ApiError) as missing:
        memories.get("m")
    assert (missing.value.status, missing.value.error, missing.value.field) == (404, "memory_not_found", "name")
    classifiers.add("c", "first")
    with pytest.raises(ApiError) as taken:
        classifiers.add("c", "second")
    assert (taken.value.status, taken.value.error) == (409, "already_exists")
    assert "a classifier named 'c'" in taken.value.detail
    memories.add("m", "x")
    with pytest.raises(ApiError, match="an item memory named 'm'"):
        memories.check_free("m")
    assert classifiers.get("c") == "first"  # the refused add changed nothing


def test_named_entries_iterate_over_a_copy_of_the_names():
    entries: NamedEntries[int] = NamedEntries("memory", "item memory")
    entries.load({"b": 2, "a": 1})
    for name in entries:  # removing while iterating is safe: the snapshot of names is taken first
        entries.remove(name)
    assert len(entries) == 0 and "a" not in entries
    entries.load({"b": 2, "a": 1})
    assert entries.sorted_items() == [("a", 1), ("b", 2)]
