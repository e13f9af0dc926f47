"""The state store's tables (SQLAlchemy Core, the same on PostgreSQL and SQLite) and the records read from them.

- `hdc_state_head`: one row, the global state version: the version of the newest committed log entry. A write
  takes the next version by updating this row, so the row lock orders writers: versions are handed out in
  commit order and without gaps (a rolled-back write rolls its version back too). A reader that has seen
  version V has therefore seen every entry <= V, which is what makes "applied up to V" well defined.
- `hdc_state_objects`: one row per (kind, name) ever created: the current generation, whether it is live, the
  next item id of a memory, the create parameters, the newest entry's version and the version up to which its
  entries are compacted. Locking this row is the per-object lock: item ids are handed out under it.
- `hdc_state_log`: the append-only log, one entry per committed write, keyed by the global version.
- `hdc_state_segments`: compacted state: a memory's items as blobs covering consecutive id ranges, a
  classifier's weights at a version. A new follower loads these and replays only the entries after them.
- `hdc_state_idempotency` (schema version 2): per idempotency key, the request it was first used for (operation,
  path, a digest of the body and query) and the answer that was committed with its write, in the same
  transaction, so a retry on any replica gets that answer instead of a second write.

Schema versions: 1, the log; 2 adds the idempotency table and keeps a classifier's samples seen in its object
row's `size` (`migrations.py` upgrades a version 1 database in place at start).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
)

SCHEMA_VERSION = 2
MAX_NAME_LENGTH = 128
MAX_IDEMPOTENCY_KEY_LENGTH = 128
NOTIFY_CHANNEL = "hdc_state"  # PostgreSQL NOTIFY channel; the payload is the committed version


class Kind(enum.StrEnum):
    MEMORY = "memory"
    CLASSIFIER = "classifier"


class Op(enum.StrEnum):
    CREATE = "create"
    DELETE = "delete"
    ADD = "add"  # memory: items first_id .. first_id + count - 1
    FIT_DELTA = "fit_delta"  # classifier: weights += payload (non-adaptive partial fit; deltas commute)
    FIT_FULL = "fit_full"  # classifier: weights = payload (full fit, or an adaptive partial fit)


metadata = MetaData()

head = Table(
    "hdc_state_head",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", BigInteger, nullable=False),
    Column("schema_version", Integer, nullable=False),
)

objects = Table(
    "hdc_state_objects",
    metadata,
    Column("kind", String(16), nullable=False),
    Column("name", String(MAX_NAME_LENGTH), nullable=False),
    Column("generation", Integer, nullable=False),
    Column("live", Boolean, nullable=False),
    Column("size", BigInteger, nullable=False),  # memory: the next item id; classifier: samples seen
    Column("meta", JSON, nullable=False),  # the create parameters
    Column("version", BigInteger, nullable=False),  # the newest entry of this object
    Column("compacted_version", BigInteger, nullable=False),  # entries <= this are in segments
    Column("pending", Integer, nullable=False),  # entries since the last compaction
    PrimaryKeyConstraint("kind", "name"),
)

log = Table(
    "hdc_state_log",
    metadata,
    Column("version", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", String(16), nullable=False),
    Column("name", String(MAX_NAME_LENGTH), nullable=False),
    Column("generation", Integer, nullable=False),
    Column("op", String(16), nullable=False),
    Column("first_id", BigInteger, nullable=False),
    Column("count", BigInteger, nullable=False),
    Column("payload", LargeBinary, nullable=True),
    Column("keys", JSON, nullable=True),  # memory adds: one key per item, or null when none was given
    Column("meta", JSON, nullable=True),
    Column("written_at", Float, nullable=False),  # the writer's clock (time.time()), for lag in seconds
    Index("ix_hdc_state_log_object", "kind", "name", "generation", "version"),
)

segments = Table(
    "hdc_state_segments",
    metadata,
    Column("kind", String(16), nullable=False),
    Column("name", String(MAX_NAME_LENGTH), nullable=False),
    Column("generation", Integer, nullable=False),
    Column("first_id", BigInteger, nullable=False),
    Column("count", BigInteger, nullable=False),
    Column("version", BigInteger, nullable=False),  # the newest entry this segment covers
    Column("payload", LargeBinary, nullable=True),
    Column("keys", JSON, nullable=True),
    Column("meta", JSON, nullable=True),
    PrimaryKeyConstraint("kind", "name", "generation", "first_id"),
)

idempotency = Table(
    "hdc_state_idempotency",
    metadata,
    Column("key", String(MAX_IDEMPOTENCY_KEY_LENGTH), primary_key=True),
    Column("operation", String(64), nullable=False),
    Column("path", String(1024), nullable=False),
    Column("digest", String(64), nullable=False),  # sha256 (hex) of the request's body and query, as decoded
    Column("status", Integer, nullable=True),  # null only inside the transaction that claimed the key
    Column("body", LargeBinary, nullable=True),  # the answer's body (JSON)
    Column("version", BigInteger, nullable=False),  # the state version the answer was committed at
    Column("expires_at", Float, nullable=False),  # the writer's clock (time.time()) + the key's time to live
    Index("ix_hdc_state_idempotency_expires", "expires_at"),
)


@dataclass(frozen=True)
class Entry:
    """One committed log entry as read back."""

    version: int
    kind: Kind
    name: str
    generation: int
    op: Op
    first_id: int
    count: int
    payload: bytes | None
    keys: list[str] | None
    meta: dict[str, Any]
    written_at: float

    @classmethod
    def from_row(cls, row: Any) -> "Entry":
        return cls(
            int(row.version),
            Kind(row.kind),
            row.name,
            int(row.generation),
            Op(row.op),
            int(row.first_id),
            int(row.count),
            row.payload,
            row.keys,
            dict(row.meta or {}),
            float(row.written_at),
        )


@dataclass(frozen=True)
class Segment:
    """Compacted items of a memory (ids first_id .. first_id + count - 1), or a classifier's weights."""

    kind: Kind
    name: str
    generation: int
    first_id: int
    count: int
    version: int
    payload: bytes | None
    keys: list[str] | None
    meta: dict[str, Any]

    @classmethod
    def from_row(cls, row: Any) -> "Segment":
        return cls(
            Kind(row.kind),
            row.name,
            int(row.generation),
            int(row.first_id),
            int(row.count),
            int(row.version),
            row.payload,
            row.keys,
            dict(row.meta or {}),
        )


@dataclass(frozen=True)
class ObjectRow:
    """A live object's create parameters and generation, as a follower's bootstrap reads them."""

    kind: Kind
    name: str
    generation: int
    meta: dict[str, Any]
    size: int
    version: int
    compacted_version: int

    @classmethod
    def from_row(cls, row: Any) -> "ObjectRow":
        return cls(
            Kind(row.kind),
            row.name,
            int(row.generation),
            dict(row.meta),
            int(row.size),
            int(row.version),
            int(row.compacted_version),
        )
