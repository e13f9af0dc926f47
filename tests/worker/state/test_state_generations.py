"""Delete then recreate of a name: each create starts a generation, and no follower ever mixes two of them,
whether it watched every step, slept through both, or came back after the log was pruned."""

from __future__ import annotations

import pytest
import torch

import hd_compute as hd
from hd_compute.state import Follower, Kind, NotFound, StateStore
from hd_compute.state.blobs import to_bytes
from hd_compute.state.cache import StateCache
from hd_compute.state.schema import Entry, Op


def first_then_second(store: StateStore) -> tuple[hd.Hypervectors, hd.Hypervectors]:
    """Writes generation 1 of memory "m" (BSC, D=512, keyed "old") and classifier "c" (3 classes)."""
    old = hd.random(4, 512, "BSC")
    store.create_memory("m", 512, "BSC")
    store.add_items("m", old, keys=["old"] * 4)
    store.create_classifier("c", 3, 512, "BSC")
    store.fit_classifier("c", hd.random(6, 512, "BSC"), torch.arange(6) % 3, partial=True)
    new = hd.random(2, 256, "MAP")
    return old, new


def recreate(store: StateStore, new: hd.Hypervectors) -> None:
    """Deletes both and recreates them as generation 2 with other parameters (MAP, D=256, 2 classes)."""
    store.delete("memory", "m")
    store.delete("classifier", "c")
    store.create_memory("m", 256, "MAP")
    store.add_items("m", new, keys=["new", "new"])
    store.create_classifier("c", 2, 256, "MAP")
    store.fit_classifier("c", hd.random(2, 256, "MAP"), torch.tensor([0, 1]), partial=True)


def assert_second_generation(follower: Follower, new: hd.Hypervectors) -> None:
    memory = follower.memory("m")
    assert memory.generation == 2 and memory.memory.vsa.name == "MAP" and memory.memory.dim == 256
    assert torch.equal(memory.memory.vectors.data, new.data) and memory.keys == ["new", "new"]
    classifier = follower.classifier("c")
    assert classifier.generation == 2 and classifier.model.weights.shape == (2, 256)
    assert classifier.samples_seen == 2


def test_a_follower_that_slept_through_delete_and_recreate(backend_store: StateStore) -> None:
    store = backend_store
    _, new = first_then_second(store)
    sleeper = Follower(store)
    sleeper.catch_up()
    assert sleeper.memory("m").generation == 1 and len(sleeper.memory("m").memory) == 4
    recreate(store, new)
    sleeper.catch_up()
    assert_second_generation(sleeper, new)
    fresh = Follower(store)
    fresh.catch_up()
    assert_second_generation(fresh, new)


def test_a_follower_between_delete_and_recreate_sees_nothing_then_the_new_one(backend_store: StateStore) -> None:
    store = backend_store
    _, new = first_then_second(store)
    watcher = Follower(store)
    watcher.catch_up()
    store.delete(Kind.MEMORY, "m")
    watcher.catch_up()
    with pytest.raises(NotFound):
        watcher.memory("m")
    assert watcher.classifier("c").generation == 1
    store.delete(Kind.CLASSIFIER, "c")
    store.create_memory("m", 256, "MAP")
    store.add_items("m", new, keys=["new", "new"])
    store.create_classifier("c", 2, 256, "MAP")
    store.fit_classifier("c", hd.random(2, 256, "MAP"), torch.tensor([0, 1]), partial=True)
    watcher.catch_up()
    assert_second_generation(watcher, new)


def test_a_follower_behind_a_pruned_log_reloads_only_the_new_generation(backend_store: StateStore) -> None:
    store = StateStore(backend_store.database, retain_versions=0)
    _, new = first_then_second(store)
    sleeper = Follower(store)
    sleeper.catch_up()
    recreate(store, new)
    store.compact_all()  # prunes everything up to the head: the sleeper's next versions are gone
    sleeper.catch_up()
    assert sleeper.status().reloads == 2  # its first load, and the reload over the gap
    assert_second_generation(sleeper, new)


def test_entries_of_another_generation_change_nothing() -> None:
    cache = StateCache(torch.device("cpu"))
    meta = {"dim": 64, "vsa": "MAP", "dtype": "int8"}

    def entry(version: int, generation: int, op: Op, **fields: object) -> Entry:
        values: dict = {"first_id": 0, "count": 0, "payload": None, "keys": None, "meta": meta, **fields}
        return Entry(version, Kind.MEMORY, "m", generation, op, written_at=0.0, **values)

    rows = hd.random(2, 64, "MAP").data
    cache.apply(entry(1, 1, Op.CREATE))
    cache.apply(entry(2, 1, Op.DELETE))
    cache.apply(entry(3, 2, Op.CREATE))
    cache.apply(entry(2, 1, Op.ADD, count=2, payload=to_bytes(rows)))  # a stale add of generation 1
    cache.apply(entry(1, 1, Op.CREATE))  # a stale create
    cache.apply(entry(2, 1, Op.DELETE))  # a stale delete
    assert cache.memories["m"].generation == 2 and len(cache.memories["m"].memory) == 0
    cache.apply(entry(4, 2, Op.ADD, count=2, payload=to_bytes(rows)))
    cache.apply(entry(4, 2, Op.ADD, count=2, payload=to_bytes(rows)))  # applied twice: once
    assert len(cache.memories["m"].memory) == 2 and cache.applied == 4
