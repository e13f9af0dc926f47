"""Writes: each one appends one entry to the log inside a database transaction (`Transaction`).

The order of locks is the same for every write, so writers never deadlock one another:
1. the object's row (SELECT ... FOR UPDATE; created first when a name is new): the per-object lock. Under it the
   write checks that the object is live (or, for a create, that it is not) and hands out item ids from the
   row's `size`, so concurrent adds from several processes get unique, gap-free ids;
2. the head row (UPDATE ... RETURNING): the next global version, held until COMMIT, so versions follow commit
   order. Everything slow (a fit's arithmetic, reading a classifier's current weights) happens before this step.
Nothing outside the database changes here: a follower's cache changes only by reading committed entries, so a
write whose transaction rolls back leaves no trace anywhere.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from sqlalchemy import Connection, delete, select, update

from hd_compute.errors import check_positive_int
from hd_compute.hypervectors import Hypervectors
from hd_compute.vsa import get_model

from . import fits
from .blobs import dtype_name, to_bytes
from .database import Database
from .errors import AlreadyExists, IdempotencyKeyReused, NotFound
from .reader import current_object
from .schema import MAX_NAME_LENGTH, Kind, ObjectRow, Op, head, idempotency, log, objects, segments


@dataclass(frozen=True)
class IdempotentRequest:
    """A write sent with an idempotency key: what the key is recorded with, and for how long."""

    key: str
    operation: str  # the service's operation name ("memory_add")
    path: str
    digest: str  # sha256 (hex) of the request's body and query
    ttl_seconds: float


@dataclass(frozen=True)
class RecordedAnswer:
    """The answer committed with a keyed write."""

    status: int
    body: bytes
    version: int


@dataclass(frozen=True)
class Committed:
    """A write, acknowledged: its log entry exists at `version` (valid once the transaction has committed)."""

    version: int  # the global state version of this write's entry: wait for it to read your own write
    kind: Kind
    name: str
    generation: int
    op: Op
    first_id: int = 0  # adds: the ids of the items are first_id .. first_id + count - 1
    count: int = 0  # adds: items added; fits: samples in the fit
    size: int = 0  # after this write: a memory's items, a classifier's samples seen

    @property
    def ids(self) -> range:
        return range(self.first_id, self.first_id + self.count) if self.op == Op.ADD else range(0)


def check_name(name: object) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_LENGTH:
        raise ValueError(f"name must be a string of 1 to {MAX_NAME_LENGTH} characters, got {name!r}")
    return name


class Transaction:
    """Writes that commit together when the `StateStore.transaction()` block ends (and not at all if it raises).

    `committed` lists them; `due` names the objects whose uncompacted entries reached `compact_every`.
    """

    def __init__(self, db: Database, conn: Connection, compact_every: int) -> None:
        self.db = db
        self.conn = conn
        self.compact_every = compact_every
        self.committed: list[Committed] = []
        self.due: set[tuple[Kind, str]] = set()

    # -- memories ----------------------------------------------------------------------------------------------
    def create_memory(self, name: str, dim: int, vsa: str = "MAP", dtype: torch.dtype | None = None) -> Committed:
        model = get_model(vsa)
        meta = {
            "dim": check_positive_int(dim, "dim"),
            "vsa": model.name,
            "dtype": dtype_name(model.storage_dtype(dtype)),
        }
        return self._create(Kind.MEMORY, name, meta)

    def add_items(self, name: str, items: Hypervectors, keys: Sequence[str] | None = None) -> Committed:
        """Appends `items` (one hypervector or a 1-D batch) with optional keys, one per item."""
        obj = self._lock_live(Kind.MEMORY, name)
        meta = obj.meta
        if (items.vsa.name, items.dim, dtype_name(items.dtype)) != (meta["vsa"], meta["dim"], meta["dtype"]):
            raise ValueError(
                f"items are {items.vsa.name} D={items.dim} {dtype_name(items.dtype)}; memory {name!r} "
                f"holds {meta['vsa']} D={meta['dim']} {meta['dtype']}"
            )
        rows = items.data.reshape(-1, items.data.shape[-1])
        count = rows.shape[0]
        if keys is not None and (len(keys) != count or not all(isinstance(k, str) for k in keys)):
            raise ValueError(f"keys must be {count} strings, one per item")
        first_id = obj.size
        return self._append(
            obj,
            Op.ADD,
            first_id=first_id,
            count=count,
            payload=to_bytes(rows),
            keys=list(keys) if keys is not None else None,
            changes={"size": first_id + count},
            size=first_id + count,
        )

    # -- classifiers -------------------------------------------------------------------------------------------
    def create_classifier(
        self, name: str, num_classes: int, dim: int, vsa: str = "MAP", temperature: float = 0.05
    ) -> Committed:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        meta = {
            "num_classes": check_positive_int(num_classes, "num_classes"),
            "dim": check_positive_int(dim, "dim"),
            "vsa": get_model(vsa).name,
            "temperature": float(temperature),
        }
        return self._create(Kind.CLASSIFIER, name, meta)

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
        """Centroid.fit (partial=False) or Centroid.partial_fit on the classifier's committed state."""
        obj = self._lock_live(Kind.CLASSIFIER, name)
        samples = int(torch.as_tensor(y).numel())  # the fits below refuse labels that do not match x
        if partial and not adaptive:
            weights, op, count = fits.class_sums(obj.meta, x, y), Op.FIT_DELTA, samples
        elif partial:
            current = current_object(self.conn, obj).classifiers[name]
            weights = fits.adaptive_step(obj.meta, current.model.weights, x, y, lr=lr)
            op, count = Op.FIT_FULL, obj.size + samples
        else:
            weights = fits.full_fit(obj.meta, x, y, epochs=epochs, adaptive=adaptive, lr=lr)
            op, count = Op.FIT_FULL, samples
        seen = obj.size + samples if partial else samples
        return self._append(
            obj,
            op,
            count=count,
            payload=to_bytes(weights),
            meta={"dtype": dtype_name(weights.dtype)},
            changes={"size": seen},
            size=seen,
        )

    def load_weights(self, name: str, weights: torch.Tensor, samples_seen: int) -> Committed:
        """Sets the classifier's weights as a new full version (the import of snapshot files)."""
        obj = self._lock_live(Kind.CLASSIFIER, name)
        if tuple(weights.shape) != (obj.meta["num_classes"], obj.meta["dim"]):
            raise ValueError(
                f"weights of classifier {name!r} must have shape ({obj.meta['num_classes']}, "
                f"{obj.meta['dim']}), got {tuple(weights.shape)}"
            )
        return self._append(
            obj,
            Op.FIT_FULL,
            count=samples_seen,
            payload=to_bytes(weights),
            meta={"dtype": dtype_name(weights.dtype)},
            changes={"size": samples_seen},
            size=samples_seen,
        )

    # -- both --------------------------------------------------------------------------------------------------
    def delete(self, kind: Kind, name: str) -> Committed:
        obj = self._lock_live(Kind(kind), name)
        self.conn.execute(delete(segments).where(segments.c.kind == obj.kind, segments.c.name == obj.name))
        committed = self._append(obj, Op.DELETE, changes={"live": False, "size": 0})
        self.due.add((obj.kind, obj.name))
        return committed

    # -- idempotency keys --------------------------------------------------------------------------------------
    def claim_key(self, request: IdempotentRequest) -> RecordedAnswer | None:
        """The answer recorded under `request.key` when that request was committed before (and has not expired);
        else None, with the key claimed by this transaction until it commits or rolls back. The key's row is the
        first lock a keyed write takes (before the object's row and the head row): a concurrent write with the
        same key, on any replica, waits here for this one and then finds its answer.
        Raises IdempotencyKeyReused when the recorded request is another one."""
        now = time.time()
        claim = {
            "operation": request.operation,
            "path": request.path,
            "digest": request.digest,
            "status": None,
            "body": None,
            "version": 0,
            "expires_at": now + request.ttl_seconds,
        }
        self.conn.execute(self.db.insert_or_ignore(idempotency, {"key": request.key, **claim}))
        row = self.conn.execute(select(idempotency).where(idempotency.c.key == request.key).with_for_update()).one()
        if row.status is not None and row.expires_at > now:
            if (row.operation, row.path, row.digest) != (request.operation, request.path, request.digest):
                raise IdempotencyKeyReused(request.key, row.operation, row.path)
            return RecordedAnswer(int(row.status), bytes(row.body or b""), int(row.version))
        # inserted just now (a committed row always has its answer), or expired: this request takes the key over
        self.conn.execute(update(idempotency).where(idempotency.c.key == request.key).values(**claim))
        return None

    def record_answer(self, key: str, status: int, body: bytes, version: int) -> None:
        """Stores the answer of the write this transaction made under `key` (claimed with claim_key)."""
        self.conn.execute(
            update(idempotency).where(idempotency.c.key == key).values(status=status, body=body, version=version)
        )

    def _create(self, kind: Kind, name: str, meta: dict[str, Any]) -> Committed:
        name = check_name(name)
        self.conn.execute(
            self.db.insert_or_ignore(
                objects,
                {
                    "kind": kind,
                    "name": name,
                    "generation": 0,
                    "live": False,
                    "size": 0,
                    "meta": {},
                    "version": 0,
                    "compacted_version": 0,
                    "pending": 0,
                },
            )
        )
        row = self._locked_row(kind, name)
        if row.live:
            raise AlreadyExists(kind, name)
        obj = ObjectRow(kind, name, int(row.generation) + 1, meta, 0, int(row.version), int(row.compacted_version))
        # A new object's state is its row, so its create entry counts as compacted.
        return self._append(
            obj,
            Op.CREATE,
            meta=meta,
            compacted=True,
            changes={"live": True, "generation": obj.generation, "size": 0, "meta": meta},
        )

    def _lock_live(self, kind: Kind, name: str) -> ObjectRow:
        row = self._locked_row(kind, check_name(name))
        if row is None or not row.live:
            raise NotFound(kind, name)
        return ObjectRow.from_row(row)

    def _locked_row(self, kind: Kind, name: str) -> Any:
        query = select(objects).where(objects.c.kind == kind, objects.c.name == name).with_for_update()
        return self.conn.execute(query).first()

    def _append(
        self,
        obj: ObjectRow,
        op: Op,
        *,
        first_id: int = 0,
        count: int = 0,
        payload: bytes | None = None,
        keys: list[str] | None = None,
        meta: dict[str, Any] | None = None,
        compacted: bool = False,
        changes: dict[str, Any] | None = None,
        size: int = 0,
    ) -> Committed:
        version = int(
            self.conn.execute(
                update(head).where(head.c.id == 1).values(version=head.c.version + 1).returning(head.c.version)
            ).scalar_one()
        )
        self.conn.execute(
            log.insert().values(
                version=version,
                kind=obj.kind,
                name=obj.name,
                generation=obj.generation,
                op=op,
                first_id=first_id,
                count=count,
                payload=payload,
                keys=keys,
                meta=meta,
                written_at=time.time(),
            )
        )
        values: dict[str, Any] = {
            "version": version,
            "pending": 0 if compacted else objects.c.pending + 1,
            **(changes or {}),
        }
        if compacted:
            values["compacted_version"] = version
        pending = self.conn.execute(
            update(objects)
            .where(objects.c.kind == obj.kind, objects.c.name == obj.name)
            .values(**values)
            .returning(objects.c.pending)
        ).scalar_one()
        self.db.notify(self.conn, version)
        if self.compact_every and pending >= self.compact_every:
            self.due.add((obj.kind, obj.name))
        committed = Committed(version, obj.kind, obj.name, obj.generation, op, first_id, count, size)
        self.committed.append(committed)
        return committed
