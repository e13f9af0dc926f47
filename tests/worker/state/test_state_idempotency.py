"""Idempotency keys in the state store (`StateStore.write_once`), the samples seen a write reports, and the
upgrade of a schema version 1 database."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from sqlalchemy import create_engine, inspect, text

import hd_compute.functional as F
from hd_compute.state import (
    Committed,
    Follower,
    IdempotencyKeyReused,
    IdempotentRequest,
    NotFound,
    StateStore,
    Transaction,
)
from hd_compute.state.schema import SCHEMA_VERSION

DIM = 64


def _request(key: str = "k-1", digest: str = "d1", ttl: float = 3600.0) -> IdempotentRequest:
    return IdempotentRequest(key, "memory_add", "/v1/memories/m/items", digest, ttl)


def _answer(committed: Committed) -> tuple[int, bytes]:
    return 200, f"{committed.first_id}:{committed.count}:{committed.size}".encode()


def _add(n: int, seed: int = 0):
    items = F.random(n, DIM, "MAP", seed=seed)
    return lambda tx: tx.add_items("m", items)


def test_a_keyed_write_is_applied_once_and_its_answer_replayed(backend_store: StateStore) -> None:
    store = backend_store
    store.create_memory("m", DIM)
    first = store.write_once(_request(), _add(3), _answer)
    assert (first.status, first.body, first.replayed) == (200, b"0:3:3", False)
    again = store.write_once(_request(), _add(3), _answer)
    assert (again.status, again.body, again.version, again.replayed) == (200, b"0:3:3", first.version, True)
    assert store.head_version() == first.version  # the replay wrote nothing
    follower = Follower(store)
    follower.catch_up()
    assert len(follower.memory("m").memory) == 3
    unkeyed = store.write_once(None, _add(2, seed=1), _answer)
    assert (unkeyed.body, unkeyed.replayed) == (b"3:2:5", False)


def test_the_same_key_with_another_request_is_refused_and_writes_nothing(backend_store: StateStore) -> None:
    store = backend_store
    store.create_memory("m", DIM)
    store.write_once(_request(digest="first"), _add(1), _answer)
    head = store.head_version()
    with pytest.raises(IdempotencyKeyReused) as refused:
        store.write_once(_request(digest="second"), _add(1), _answer)
    assert refused.value.key == "k-1" and refused.value.operation == "memory_add"
    other_path = IdempotentRequest("k-1", "memory_add", "/v1/memories/other/items", "first", 3600.0)
    with pytest.raises(IdempotencyKeyReused):
        store.write_once(other_path, _add(1), _answer)
    assert store.head_version() == head


def test_a_failed_write_records_no_answer_so_its_retry_runs_again(backend_store: StateStore) -> None:
    store = backend_store
    with pytest.raises(NotFound):
        store.write_once(_request(), _add(2), _answer)
    store.create_memory("m", DIM)
    retried = store.write_once(_request(), _add(2), _answer)
    assert (retried.body, retried.replayed) == (b"0:2:2", False)


def test_an_expired_key_is_a_new_request_and_expiry_deletes_it(backend_store: StateStore) -> None:
    store = backend_store
    store.create_memory("m", DIM)
    store.write_once(_request(ttl=1e-9), _add(1), _answer)  # expired as soon as it is committed
    second = store.write_once(_request(ttl=1e-9, digest="another body"), _add(1, seed=2), _answer)
    assert (second.body, second.replayed) == (b"1:1:2", False)
    store.write_once(_request(key="kept"), _add(1, seed=3), _answer)
    assert store.expire_idempotency_keys() == 1  # "k-1"; "kept" lives an hour
    assert store.write_once(_request(key="kept"), _add(1, seed=3), _answer).replayed


def test_two_replicas_racing_with_one_key_write_once(pg_url: str) -> None:
    """Replica 1 holds the key in an open transaction while replica 2 sends the same request: replica 2 waits
    for the key, then answers replica 1's recorded answer; the items are added once."""
    stores = [StateStore.open(database_url=pg_url) for _ in range(2)]
    try:
        stores[0].create_memory("m", DIM)
        holding = threading.Event()
        answers = []

        def slow_add(tx: Transaction) -> Committed:
            committed = _add(4)(tx)
            holding.set()
            time.sleep(0.5)  # gives replica 2 time to reach the key; the outcome is the same either way
            return committed

        def first() -> None:
            answers.append(stores[0].write_once(_request(), slow_add, _answer))

        def second() -> None:
            holding.wait(10)
            answers.append(stores[1].write_once(_request(), _add(4), _answer))

        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted((a.body, a.replayed) for a in answers) == [(b"0:4:4", False), (b"0:4:4", True)]
        follower = Follower(stores[1])
        follower.catch_up()
        assert len(follower.memory("m").memory) == 4
    finally:
        for store in stores:
            store.close()


def test_writes_report_a_memorys_size_and_a_classifiers_samples_seen(backend_store: StateStore) -> None:
    store = backend_store
    store.create_memory("m", DIM)
    assert store.add_items("m", F.random(3, DIM, "MAP", seed=1)).size == 3
    assert store.add_items("m", F.random(2, DIM, "MAP", seed=2)).size == 5
    store.create_classifier("c", 2, DIM)
    x, y = F.random(4, DIM, "MAP", seed=3), torch.tensor([0, 1, 0, 1])
    assert store.fit_classifier("c", x, y, partial=True).size == 4
    assert store.fit_classifier("c", x, y, partial=True, adaptive=True).size == 8
    assert store.fit_classifier("c", x[:3], y[:3]).size == 3
    assert store.fit_classifier("c", x, y, partial=True).size == 7
    follower = Follower(store)
    follower.catch_up()
    assert follower.classifier("c").samples_seen == 7


def test_a_schema_version_1_database_is_upgraded_in_place(pg_url: str) -> None:
    store = StateStore.open(database_url=pg_url)
    store.create_classifier("c", 2, DIM)
    x, y = F.random(4, DIM, "MAP", seed=3), torch.tensor([0, 1, 0, 1])
    store.fit_classifier("c", x, y, partial=True)
    store.fit_classifier("c", x[:2], y[:2], partial=True)
    store.close()
    engine = create_engine(pg_url)
    with engine.begin() as conn:  # what a version 1 worker left: no idempotency table, no samples in `size`
        conn.execute(text("DROP TABLE hdc_state_idempotency"))
        conn.execute(text("UPDATE hdc_state_objects SET size = 0"))
        conn.execute(text("UPDATE hdc_state_head SET schema_version = 1"))
    upgraded = StateStore.open(database_url=pg_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT schema_version FROM hdc_state_head")).scalar() == SCHEMA_VERSION
            assert conn.execute(text("SELECT size FROM hdc_state_objects WHERE name = 'c'")).scalar() == 6
        assert "hdc_state_idempotency" in inspect(engine).get_table_names()
        assert upgraded.fit_classifier("c", x, y, partial=True).size == 10
        upgraded.create_memory("m", DIM)
        assert not upgraded.write_once(_request(), _add(1), _answer).replayed
    finally:
        upgraded.close()
        engine.dispose()
