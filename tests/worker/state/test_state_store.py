"""The state store on both backends (SQLite in a state directory, a real PostgreSQL): round trips through a
follower, typed errors, classifier versions, compaction and pruning, a failed transaction, and the import of
the service's snapshot files."""

from __future__ import annotations

import pathlib

import pytest
import torch
from sqlalchemy import func, select, text
from state_support import assert_same_contents, cache_contents

import hd_compute as hd
from hd_compute.hypervectors import Hypervectors
from hd_compute.models import Centroid
from hd_compute.state import (
    AlreadyExists,
    Follower,
    Kind,
    NotFound,
    Op,
    SchemaMismatch,
    StateStore,
    import_snapshot_files,
)
from hd_compute.state.schema import SCHEMA_VERSION, log, segments
from hd_compute.structures import ItemMemory


def test_round_trip_of_memories_and_classifiers(backend_store: StateStore) -> None:
    store = backend_store
    created = store.create_memory("animals", 1000, "bsc")
    assert (created.version, created.op, created.generation) == (1, Op.CREATE, 1)
    first, second = hd.random(3, 1000, "BSC"), hd.random(2, 1000, "BSC")
    added = store.add_items("animals", first, keys=["cat", "dog", "cow"])
    assert (added.version, list(added.ids)) == (2, [0, 1, 2])
    assert list(store.add_items("animals", second).ids) == [3, 4]
    store.create_classifier("digits", 3, 64, "MAP", temperature=0.1)
    x, y = hd.random(12, 64, "MAP"), torch.arange(12) % 3
    fitted = store.fit_classifier("digits", x, y)
    assert store.head_version() == fitted.version == 5

    follower = Follower(store)
    assert follower.catch_up() == 5
    cached = follower.memory("animals")
    assert cached.memory.vsa.name == "BSC" and cached.memory.dim == 1000
    assert torch.equal(cached.memory.vectors.data, torch.cat([first.data, second.data]))
    assert cached.keys == ["cat", "dog", "cow", "", ""]
    assert cached.memory.search(first[1]).indices.item() == 1
    model = follower.classifier("digits").model
    assert torch.equal(model.weights, Centroid(3, 64).fit(x, y).weights)
    assert model.temperature == 0.1 and follower.classifier("digits").samples_seen == 12


def test_typed_errors_and_no_write_for_a_refused_request(backend_store: StateStore) -> None:
    store = backend_store
    store.create_memory("m", 256, "MAP")
    with pytest.raises(AlreadyExists) as exists:
        store.create_memory("m", 256, "MAP")
    assert (exists.value.kind, exists.value.name) == ("memory", "m")
    with pytest.raises(NotFound) as missing:
        store.add_items("nothing", hd.random(1, 256, "MAP"))
    assert (missing.value.kind, missing.value.name) == ("memory", "nothing")
    with pytest.raises(NotFound):
        store.delete(Kind.CLASSIFIER, "m")  # a memory of that name is no classifier
    with pytest.raises(ValueError, match="D=128"):
        store.add_items("m", hd.random(1, 128, "MAP"))
    with pytest.raises(ValueError, match="keys"):
        store.add_items("m", hd.random(2, 256, "MAP"), keys=["only one"])
    assert store.head_version() == 1


def test_a_transaction_that_fails_leaves_no_trace(backend_store: StateStore) -> None:
    store = backend_store
    store.create_memory("m", 256, "MAP")
    follower = Follower(store)
    follower.catch_up()
    with pytest.raises(RuntimeError, match="after the add"):
        with store.transaction() as tx:
            tx.add_items("m", hd.random(4, 256, "MAP"))
            raise RuntimeError("failure after the add, before the commit")
    assert store.head_version() == 1
    assert follower.catch_up() == 1 and len(follower.memory("m").memory) == 0
    assert list(store.add_items("m", hd.random(2, 256, "MAP")).ids) == [0, 1]  # the ids were not consumed


def test_classifier_versions_partial_fits_are_deltas_adaptive_fits_full_versions(backend_store: StateStore) -> None:
    store = backend_store
    store.create_classifier("c", 4, 128, "MAP")
    batches = [
        (hd.random(16, 128, "MAP", generator=torch.Generator().manual_seed(i)), torch.arange(16) % 4) for i in range(3)
    ]
    reference = Centroid(4, 128)
    ops = []
    for x, y in batches[:2]:
        ops.append(store.fit_classifier("c", x, y, partial=True).op)
        reference.partial_fit(x, y)
    ops.append(store.fit_classifier("c", *batches[2], partial=True, adaptive=True, lr=0.5).op)
    reference.partial_fit(*batches[2], adaptive=True, lr=0.5)
    assert ops == [Op.FIT_DELTA, Op.FIT_DELTA, Op.FIT_FULL]
    follower = Follower(store)
    follower.catch_up()
    cached = follower.classifier("c")
    torch.testing.assert_close(cached.model.weights, reference.weights)
    assert cached.samples_seen == 48
    refit = store.fit_classifier("c", *batches[0], epochs=2, adaptive=True)
    follower.catch_up()
    assert refit.op == Op.FIT_FULL and follower.classifier("c").samples_seen == 16
    expected = Centroid(4, 128).fit(*batches[0], epochs=2, adaptive=True).weights
    torch.testing.assert_close(follower.classifier("c").model.weights, expected)


def test_a_new_follower_loads_segments_and_replays_only_what_came_after(backend_store: StateStore) -> None:
    store = StateStore(backend_store.database, retain_versions=0)  # prune everything the segments cover
    incremental = Follower(store)
    store.create_memory("m", 640, "BSC")
    store.create_classifier("c", 2, 640, "BSC")
    for i in range(6):
        store.add_items("m", hd.random(3, 640, "BSC"), keys=[f"k{i}-{j}" for j in range(3)])
        store.fit_classifier("c", hd.random(2, 640, "BSC"), torch.tensor([0, 1]), partial=True)
        incremental.catch_up()
    assert store.compact_all() == 2
    compacted_at = store.head_version()
    store.add_items("m", hd.random(2, 640, "BSC"))
    store.fit_classifier("c", hd.random(2, 640, "BSC"), torch.tensor([1, 1]), partial=True)
    with store.database.reading("test") as conn:
        assert conn.execute(select(func.min(log.c.version))).scalar_one() == compacted_at + 1
        assert conn.execute(select(func.count()).select_from(segments)).scalar_one() == 2

    fresh = Follower(store)
    assert fresh.catch_up() == incremental.catch_up() == store.head_version()
    assert len(fresh.memory("m").memory) == 20 and fresh.classifier("c").samples_seen == 14
    assert fresh.memory("m").keys[:3] == ["k0-0", "k0-1", "k0-2"] and fresh.memory("m").keys[-2:] == ["", ""]
    assert_same_contents(cache_contents(fresh), cache_contents(incremental))


def test_pruned_log_makes_a_lagging_follower_reload(pg_url: str) -> None:
    store = StateStore.open(database_url=pg_url, retain_versions=2)
    store.create_memory("m", 256, "MAP")
    lagging = Follower(store)
    lagging.catch_up()
    reloads = lagging.status().reloads
    items = [hd.random(1, 256, "MAP") for _ in range(8)]
    for item in items:
        store.add_items("m", item)
    store.compact_all()
    with store.database.reading("test") as conn:
        remaining = conn.execute(select(func.min(log.c.version))).scalar_one()
    assert remaining > lagging.applied_version + 1  # the entries right after the follower's version are gone
    lagging.catch_up()
    assert lagging.status().reloads == reloads + 1
    assert torch.equal(lagging.memory("m").memory.vectors.data, torch.cat([i.data for i in items]))
    store.close()


def test_snapshot_files_are_imported_once_into_an_empty_store(tmp_path: pathlib.Path, pg_url: str) -> None:
    old = tmp_path / "old"
    (old / "memories").mkdir(parents=True)
    (old / "classifiers").mkdir()

    def save_memory(name: str, memory: ItemMemory, keys: list[str]) -> None:  # the earlier workers' file format
        torch.save({"format": 1, "name": name, **memory.state_dict(), "keys": keys}, old / "memories" / f"{name}.pt")

    def save_classifier(name: str, model: Centroid, vsa: str, samples_seen: int) -> None:
        state = {
            "format": 1,
            "name": name,
            "vsa": vsa,
            "num_classes": model.num_classes,
            "dim": model.dim,
            "temperature": model.temperature,
            "samples_seen": samples_seen,
            "weights": None if model.weights is None else model.weights.detach().cpu().clone(),
        }
        torch.save(state, old / "classifiers" / f"{name}.pt")

    memory = ItemMemory(512, "FHRR")
    vectors = hd.random(5, 512, "FHRR")
    memory.add(vectors)
    save_memory("phasors", memory, ["a", "b", "", "d", "e"])
    plain = ItemMemory(300, "HRR")
    plain.add(hd.random(2, 300, "HRR"))
    save_memory("plain", plain, ["", ""])
    x, y = hd.random(6, 512, "FHRR"), torch.tensor([0, 1, 2, 0, 1, 2])
    fitted = Centroid(3, 512, temperature=0.2).fit(x, y)
    save_classifier("clf", fitted, "FHRR", 6)
    save_classifier("unfitted", Centroid(2, 512), "MAP", 0)

    store = StateStore.open(database_url=pg_url)
    result = import_snapshot_files(store, str(tmp_path / "old"))
    assert (result.memories, result.classifiers) == (["phasors", "plain"], ["clf", "unfitted"])
    again = import_snapshot_files(store, str(tmp_path / "old"))
    assert again.skipped and "not empty" in again.skipped and store.head_version() == result.version

    follower = Follower(store)
    follower.catch_up()
    assert torch.equal(follower.memory("phasors").memory.vectors.data, vectors.data)
    assert follower.memory("phasors").keys == ["a", "b", "", "d", "e"]
    assert follower.memory("plain").keys == ["", ""] and len(follower.memory("plain").memory) == 2
    clf = follower.classifier("clf")
    assert torch.equal(clf.model.weights, fitted.weights) and clf.samples_seen == 6 and clf.vsa == "FHRR"
    assert clf.model.temperature == 0.2
    assert follower.classifier("unfitted").model.weights is None
    store.close()


def test_memories_on_every_model_round_trip_bit_for_bit(backend_store: StateStore, vsa: str) -> None:
    store = backend_store
    items = hd.random(7, 333, vsa)
    store.create_memory("m", 333, vsa)
    store.add_items("m", items)
    store.compact_all()
    store.add_items("m", items[2:4])
    a, b = Follower(store), Follower(store)
    a.catch_up()
    b.catch_up()
    assert torch.equal(a.memory("m").memory.vectors.data, torch.cat([items.data, items.data[2:4]]))
    assert_same_contents(cache_contents(a), cache_contents(b))


def test_device_argument_places_the_cache(backend_store: StateStore, device: str) -> None:
    store = backend_store
    store.create_memory("m", 64, "MAP")
    store.add_items("m", hd.random(2, 64, "MAP"))
    follower = Follower(store, device)
    follower.catch_up()
    assert follower.memory("m").memory.vectors.data.device.type == device
    assert isinstance(follower.memory("m").memory.vectors, Hypervectors)


def test_a_database_with_another_schema_version_is_refused(pg_url: str) -> None:
    StateStore.open(database_url=pg_url).close()
    store = StateStore.open(database_url=pg_url)
    with store.database.writing("test") as conn:
        conn.execute(text("UPDATE hdc_state_head SET schema_version = 99"))
    store.close()
    with pytest.raises(SchemaMismatch) as mismatch:
        StateStore.open(database_url=pg_url)
    assert (mismatch.value.found, mismatch.value.expected) == (99, SCHEMA_VERSION)


def test_an_unreadable_snapshot_file_stops_the_import_and_imports_nothing(tmp_path: pathlib.Path, pg_url: str) -> None:
    (tmp_path / "old" / "memories").mkdir(parents=True)
    torch.save(
        {"name": "good", "dim": 64, "vsa": "MAP", "dtype": "int8", "vectors": hd.random(2, 64, "MAP").data, "keys": []},
        tmp_path / "old" / "memories" / "a.pt",
    )
    (tmp_path / "old" / "memories" / "b.pt").write_bytes(b"not a torch file")
    store = StateStore.open(database_url=pg_url)
    with pytest.raises(RuntimeError, match="b.pt"):
        import_snapshot_files(store, str(tmp_path / "old"))
    assert store.head_version() == 0  # the good file's writes rolled back with the rest
    store.close()
