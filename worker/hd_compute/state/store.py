"""`StateStore`: the one interface to the state, whichever backend holds it.

    store = StateStore.open(database_url=os.environ.get("HDC_STATE_DATABASE_URL"), state_dir="hdc-state")
    written = store.add_items("animals", items, keys=["cat", "dog"])   # returns once committed
    written.version, written.ids                                       # the state version, the items' ids

Every write method returns a `Committed` only after its transaction has committed, and raises otherwise
(`NotFound`, `AlreadyExists`, `ValueError` for a bad argument, `StoreUnavailable` when the database did not
answer). Thread-safe: each call takes its own connection (SQLite: one writer at a time in the process).
Objects whose uncompacted entries reached `compact_every` are remembered and compacted by `compact_due()`,
which a `Follower`'s background thread calls after catching up, so writes never wait for a compaction.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from sqlalchemy import delete

from hd_compute.hypervectors import Hypervectors

from . import compaction, reader
from .cache import StateCache
from .database import POSTGRESQL, Database
from .schema import Kind, idempotency
from .writes import Committed, IdempotentRequest, Transaction

DEFAULT_COMPACT_EVERY = 1000  # uncompacted entries of one object that make it due for compaction
DEFAULT_RETAIN_VERSIONS = 100_000  # versions of log kept beyond what compaction covers, for lagging followers


@dataclass(frozen=True)
class Answered:
    """What a keyed write answers: its status and body, the state version they were committed at, and whether
    they are the recorded answer of an earlier request with the same key (nothing was written this time)."""

    status: int
    body: bytes
    version: int
    replayed: bool


class StateStore:
    def __init__(
        self,
        database: Database,
        *,
        compact_every: int = DEFAULT_COMPACT_EVERY,
        retain_versions: int = DEFAULT_RETAIN_VERSIONS,
    ) -> None:
        if compact_every < 0 or retain_versions < 0:
            raise ValueError("compact_every and retain_versions must be >= 0")
        self.database = database
        self.compact_every = compact_every
        self.retain_versions = retain_versions
        self._commit_hooks: list[Callable[[int], None]] = []
        self._due: set[tuple[Kind, str]] = set()
        self._due_lock = threading.Lock()

    # -- opening -------------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, *, database_url: str | None = None, state_dir: str | None = None, **options: Any) -> "StateStore":
        """PostgreSQL when `database_url` is given (the shared system of record), else SQLite in `state_dir`
        (one process; a second one gets `StateDirLocked` naming the directory and the holder)."""
        if database_url:
            return cls(Database.postgres(database_url), **options)
        if state_dir:
            return cls(Database.sqlite(state_dir), **options)
        raise ValueError("the state store needs database_url (PostgreSQL) or state_dir (SQLite)")

    @property
    def backend(self) -> str:
        """ "postgresql" or "sqlite"."""
        return self.database.backend

    @property
    def shared(self) -> bool:
        """True when several processes may share this store (PostgreSQL)."""
        return self.database.backend == POSTGRESQL

    @property
    def description(self) -> str:
        """The database URL without its password, or the SQLite state directory."""
        return self.database.description

    def close(self) -> None:
        """Closes the connections and, for SQLite, releases the state directory."""
        self.database.close()

    # -- writing -----------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Several writes that commit together (or not at all) when the block ends."""
        with self.database.writing("write") as conn:
            tx = Transaction(self.database, conn, self.compact_every)
            yield tx
        if tx.committed:
            with self._due_lock:
                self._due |= tx.due
            newest = tx.committed[-1].version
            for hook in list(self._commit_hooks):
                hook(newest)

    def _write(self, write: Callable[[Transaction], Committed]) -> Committed:
        with self.transaction() as tx:
            committed = write(tx)
        return committed

    def create_memory(self, name: str, dim: int, vsa: str = "MAP", dtype: torch.dtype | None = None) -> Committed:
        return self._write(lambda tx: tx.create_memory(name, dim, vsa, dtype))

    def add_items(self, name: str, items: Hypervectors, keys: Sequence[str] | None = None) -> Committed:
        return self._write(lambda tx: tx.add_items(name, items, keys))

    def create_classifier(
        self, name: str, num_classes: int, dim: int, vsa: str = "MAP", temperature: float = 0.05
    ) -> Committed:
        return self._write(lambda tx: tx.create_classifier(name, num_classes, dim, vsa, temperature))

    def fit_classifier(
        self,
        name: str,
        x: Any,
        y: Any,
        *,
        partial: bool = False,
        adaptive: bool = False,
        epochs: int = 1,
        lr: float = 1.0,
    ) -> Committed:
        return self._write(
            lambda tx: tx.fit_classifier(name, x, y, partial=partial, adaptive=adaptive, epochs=epochs, lr=lr)
        )

    def delete(self, kind: Kind | str, name: str) -> Committed:
        return self._write(lambda tx: tx.delete(Kind(kind), name))

    def write_once(
        self,
        request: IdempotentRequest | None,
        write: Callable[[Transaction], Committed],
        answer: Callable[[Committed], tuple[int, bytes]],
    ) -> Answered:
        """Runs `write` and records `answer(committed)` (status, body) under `request.key` in the same
        transaction; when the key holds the recorded answer of the same request, returns that answer and writes
        nothing (`Answered.replayed`). Without a request it is `write` with its answer, nothing recorded. A write
        that raises records nothing, so its retry runs it again."""
        with self.transaction() as tx:
            recorded = tx.claim_key(request) if request is not None else None
            if recorded is not None:
                return Answered(recorded.status, recorded.body, recorded.version, replayed=True)
            committed = write(tx)
            status, body = answer(committed)
            if request is not None:
                tx.record_answer(request.key, status, body, committed.version)
        return Answered(status, body, committed.version, replayed=False)

    def expire_idempotency_keys(self, now: float | None = None) -> int:
        """Deletes the keys whose time to live has passed (a lookup already ignores them); returns how many."""
        cutoff = time.time() if now is None else now
        with self.database.writing("idempotency key expiry") as conn:
            return int(conn.execute(delete(idempotency).where(idempotency.c.expires_at <= cutoff)).rowcount)

    def on_commit(self, hook: Callable[[int], None]) -> None:
        """Calls hook(version) in the writing thread after each of this process's commits (a local wake-up)."""
        self._commit_hooks.append(hook)

    def remove_commit_hook(self, hook: Callable[[int], None]) -> None:
        if hook in self._commit_hooks:
            self._commit_hooks.remove(hook)

    # -- reading -----------------------------------------------------------------------------------------------
    def head_version(self) -> int:
        """The newest committed state version."""
        with self.database.reading("head read") as conn:
            return reader.head_of(conn)

    def read_since(self, version: int, limit: int, budget: int) -> reader.LogSlice:
        """At most `limit` entries after `version`, stopping once their payloads reach `budget` bytes."""
        return reader.read_since(self.database, version, limit, budget)

    def load_cache(self, device: torch.device) -> StateCache:
        return reader.load_cache(self.database, device)

    # -- compaction ----------------------------------------------------------------------------------------------
    def compact(self, kind: Kind | str, name: str) -> bool:
        """Folds one object's new entries into segments (False: not live, or nothing new)."""
        return compaction.compact_object(self.database, Kind(kind), name)

    def compact_due(self) -> int:
        """Compacts the objects this process's writes made due, then prunes; returns how many were compacted."""
        with self._due_lock:
            due, self._due = self._due, set()
        if not due:
            return 0
        compacted = sum(compaction.compact_object(self.database, kind, name) for kind, name in sorted(due))
        compaction.prune(self.database, self.retain_versions)
        return compacted

    def compact_all(self) -> int:
        """Compacts every live object with new entries, then prunes; returns how many were compacted."""
        targets = compaction.uncompacted(self.database)
        compacted = sum(compaction.compact_object(self.database, kind, name) for kind, name in targets)
        compaction.prune(self.database, self.retain_versions)
        return compacted
