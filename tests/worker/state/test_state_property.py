"""A property: any interleaving of creates, adds, fits, deletes and compactions through several stores on one
PostgreSQL database, with followers catching up at arbitrary points (or sleeping through most of it), leaves
every follower equal to applying the committed log in order.

The reference is independent of the store's code: plain ItemMemory rows and Centroid models updated by the
same calls, in the order the writes were acknowledged (the stores are driven one call at a time, so
acknowledgement order is commit order). Refused writes (AlreadyExists, NotFound) must be refused by the store
exactly when the reference says so, and must leave no entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

import hd_compute as hd
from hd_compute.models import Centroid
from hd_compute.state import AlreadyExists, Follower, Kind, NotFound, StateStore
from hd_compute.state.database import Database

NAMES = ["a", "b"]
STORES = 3
FIT_MODES = ["partial", "partial_adaptive", "full", "full_adaptive"]


@dataclass
class RefMemory:
    generation: int
    vsa: str
    dim: int
    rows: list[torch.Tensor] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)


@dataclass
class RefClassifier:
    generation: int
    model: Centroid
    vsa: str
    samples_seen: int = 0


@dataclass
class Reference:
    memories: dict[str, RefMemory] = field(default_factory=dict)
    classifiers: dict[str, RefClassifier] = field(default_factory=dict)
    generations: dict[tuple[str, str], int] = field(default_factory=dict)

    def next_generation(self, kind: str, name: str) -> int:
        self.generations[(kind, name)] = self.generations.get((kind, name), 0) + 1
        return self.generations[(kind, name)]


create_memory = st.tuples(
    st.just("create_memory"),
    st.integers(0, STORES - 1),
    st.sampled_from(NAMES),
    st.sampled_from([("MAP", 64), ("BSC", 100)]),
)
add = st.tuples(
    st.just("add"),
    st.integers(0, STORES - 1),
    st.sampled_from(NAMES),
    st.integers(1, 3),
    st.booleans(),
    st.integers(0, 2**31),
)
create_classifier = st.tuples(
    st.just("create_classifier"), st.integers(0, STORES - 1), st.sampled_from(NAMES), st.integers(2, 3)
)
fit = st.tuples(
    st.just("fit"),
    st.integers(0, STORES - 1),
    st.sampled_from(NAMES),
    st.sampled_from(FIT_MODES),
    st.integers(0, 2**31),
)
delete = st.tuples(
    st.just("delete"), st.integers(0, STORES - 1), st.sampled_from(["memory", "classifier"]), st.sampled_from(NAMES)
)
compact = st.tuples(st.just("compact"), st.integers(0, STORES - 1), st.booleans())
catch_up = st.tuples(st.just("catch_up"), st.integers(0, STORES - 1))
# Writes to live objects are drawn more often than the rest, so that compaction and pruning meet objects with
# entries in every state (compacted, due, pending) within a modest number of examples.
operations = st.one_of(create_memory, create_classifier, add, add, add, fit, fit, delete, compact, catch_up)


def reset(database: Database) -> None:
    with database.writing("test reset") as conn:
        conn.execute(text("TRUNCATE hdc_state_log, hdc_state_objects, hdc_state_segments"))
        conn.execute(text("UPDATE hdc_state_head SET version = 0"))


def run(op: tuple[Any, ...], stores: list[StateStore], ref: Reference) -> None:
    """Applies `op` through its store and, when the store acknowledges it, to the reference."""
    kind, store = op[0], stores[op[1]]
    if kind == "create_memory":
        _, _, name, (vsa, dim) = op
        if expect(name in ref.memories, AlreadyExists, lambda: store.create_memory(name, dim, vsa)):
            ref.memories[name] = RefMemory(ref.next_generation("memory", name), vsa, dim)
    elif kind == "add":
        _, _, name, count, keyed, seed = op
        memory = ref.memories.get(name)
        vsa, dim = (memory.vsa, memory.dim) if memory else ("MAP", 64)
        items = hd.random(count, dim, vsa, seed=seed)
        keys = [f"{seed}-{i}" for i in range(count)] if keyed else None
        if expect(memory is None, NotFound, lambda: store.add_items(name, items, keys)):
            assert memory is not None
            memory.rows.append(items.data)
            memory.keys += keys or [""] * count
    elif kind == "create_classifier":
        _, _, name, classes = op
        if expect(name in ref.classifiers, AlreadyExists, lambda: store.create_classifier(name, classes, 64)):
            ref.classifiers[name] = RefClassifier(ref.next_generation("classifier", name), Centroid(classes, 64), "MAP")
    elif kind == "fit":
        _, _, name, mode, seed = op
        clf = ref.classifiers.get(name)
        classes = clf.model.num_classes if clf else 2
        x = hd.random(6, 64, "MAP", seed=seed)
        y = torch.arange(6) % classes
        partial, adaptive = mode.startswith("partial"), mode.endswith("adaptive")
        fit = lambda: store.fit_classifier(name, x, y, partial=partial, adaptive=adaptive, lr=0.5)  # noqa: E731
        if expect(clf is None, NotFound, fit):
            assert clf is not None
            if partial:
                clf.model.partial_fit(x, y, adaptive=adaptive, lr=0.5)
                clf.samples_seen += 6
            else:
                clf.model.fit(x, y, adaptive=adaptive, lr=0.5)
                clf.samples_seen = 6
    elif kind == "delete":
        _, _, what, name = op
        table: dict[str, Any] = ref.memories if what == "memory" else ref.classifiers
        if expect(name not in table, NotFound, lambda: store.delete(Kind(what), name)):
            del table[name]
    elif kind == "compact":  # everything through one store, or what each store's writes made due (then prune)
        if op[2]:
            store.compact_all()
        else:
            for each in stores:
                each.compact_due()


def expect(refused: bool, error: type[Exception], write: Any) -> bool:
    """Runs `write`; it must raise `error` exactly when `refused`. True when it was acknowledged."""
    if refused:
        with pytest.raises(error):
            write()
        return False
    write()
    return True


def assert_equal_to_reference(follower: Follower, ref: Reference) -> None:
    memories = follower.memories()
    assert sorted(memories) == sorted(ref.memories)
    for name, expected in ref.memories.items():
        cached = memories[name]
        assert (cached.generation, cached.memory.vsa.name, cached.memory.dim) == (
            expected.generation,
            expected.vsa,
            expected.dim,
        )
        rows = torch.cat(expected.rows) if expected.rows else cached.memory.vectors.data[:0]
        assert torch.equal(cached.memory.vectors.data, rows) and cached.keys == expected.keys
    classifiers = follower.classifiers()
    assert sorted(classifiers) == sorted(ref.classifiers)
    for name, want in ref.classifiers.items():
        got = classifiers[name]
        assert (got.generation, got.samples_seen) == (want.generation, want.samples_seen)
        if want.model.weights is None:
            assert got.model.weights is None
        else:  # deltas are summed in another order than partial_fit's index_add_: equal up to rounding
            torch.testing.assert_close(got.model.weights, want.model.weights)


@pytest.fixture
def databases(pg_url: str) -> list[Database]:
    opened = [Database.postgres(pg_url) for _ in range(STORES)]
    yield opened
    for database in opened:
        database.close()


@pytest.mark.slow
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ops=st.lists(operations, min_size=10, max_size=40),
    retain=st.sampled_from([0, 3, 1000]),
    compact_every=st.sampled_from([2, 3]),
)
def test_followers_equal_the_committed_log_applied_in_order(
    databases: list[Database], ops: list[tuple[Any, ...]], retain: int, compact_every: int
) -> None:
    reset(databases[0])
    stores = [StateStore(db, compact_every=compact_every, retain_versions=retain) for db in databases]
    followers = [Follower(store) for store in stores]
    ref = Reference()
    for op in ops:
        if op[0] == "catch_up":
            followers[op[1]].catch_up()
            assert_equal_to_reference(followers[op[1]], ref)
        else:
            run(op, stores, ref)
    for follower in [*followers, Follower(stores[0])]:
        follower.catch_up()
        assert_equal_to_reference(follower, ref)
