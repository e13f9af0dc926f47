"""Compaction: an object's entries folded into segments, so a new follower loads blobs instead of replaying the
log; then pruning of the entries no one needs any more.

- A memory's new items (the adds after its compacted version) become segments covering consecutive id ranges,
  appended after the existing ones: old items are never rewritten, except that a tail segment smaller than the
  new items is merged with them (so segment sizes grow geometrically up to `SEGMENT_BYTES` and each byte is
  rewritten a bounded number of times).
- A classifier's current weights (its last full version plus the deltas since) become its one segment.
Compaction runs under the object's row lock (writers of that object wait; others do not) and writes no log
entry: the state does not change, only its representation, so no version is consumed.

Pruning deletes the entries at or below head - `retain_versions` that a bootstrap does not need: those of dead
generations and those covered by segments. A follower that has fallen further behind than that finds a gap in
the versions and reloads from the segments instead (reader.read_since).
"""

from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import Connection, and_, delete, exists, select, update

from .blobs import dtype_name, to_bytes
from .database import Database
from .reader import current_object, head_of, object_entries
from .schema import Entry, Kind, ObjectRow, Op, Segment, log, objects, segments

SEGMENT_BYTES = 16 << 20  # a memory's items per segment row at most (one row is read into memory at a time)


def compact_object(db: Database, kind: Kind, name: str) -> bool:
    """Folds the object's uncompacted entries into segments; False when it is not live or has nothing new."""
    with db.writing("compaction") as conn:
        query = select(objects).where(objects.c.kind == kind, objects.c.name == name).with_for_update()
        row = conn.execute(query).first()
        if row is None or not row.live or row.version <= row.compacted_version:
            return False
        obj = ObjectRow.from_row(row)
        if obj.kind == Kind.MEMORY:
            _compact_memory(conn, obj, object_entries(conn, obj))
        else:
            _compact_classifier(conn, obj)
        conn.execute(
            update(objects)
            .where(objects.c.kind == kind, objects.c.name == name)
            .values(compacted_version=obj.version, pending=0)
        )
    return True


class _Piece(NamedTuple):
    first_id: int
    items: int
    version: int
    payload: bytes
    keys: list[str] | None


def _compact_memory(conn: Connection, obj: ObjectRow, entries: list[Entry]) -> None:
    pieces = [
        _Piece(e.first_id, e.count, e.version, e.payload or b"", e.keys) for e in entries if e.op == Op.ADD and e.count
    ]
    if not pieces:
        return
    new_bytes = sum(len(p.payload) for p in pieces)
    of_this = (segments.c.kind == obj.kind, segments.c.name == obj.name, segments.c.generation == obj.generation)
    last = conn.execute(select(segments).where(*of_this).order_by(segments.c.first_id.desc()).limit(1)).first()
    tail = None if last is None else Segment.from_row(last)
    tail_bytes = len(tail.payload or b"") if tail is not None else 0
    if tail is not None and tail_bytes < new_bytes and tail_bytes + new_bytes <= SEGMENT_BYTES:
        conn.execute(delete(segments).where(*of_this, segments.c.first_id == tail.first_id))
        pieces.insert(0, _Piece(tail.first_id, tail.count, tail.version, tail.payload or b"", tail.keys))
    for group in _groups(pieces):
        keyed = any(p.keys is not None for p in group)
        keys = [k for p in group for k in (p.keys if p.keys is not None else [""] * p.items)] if keyed else None
        conn.execute(
            segments.insert().values(
                kind=obj.kind,
                name=obj.name,
                generation=obj.generation,
                first_id=group[0].first_id,
                count=sum(p.items for p in group),
                version=group[-1].version,
                payload=b"".join(p.payload for p in group),
                keys=keys,
                meta=None,
            )
        )


def _groups(pieces: list[_Piece]) -> list[list[_Piece]]:
    """Consecutive pieces in groups of at most SEGMENT_BYTES (a larger single piece is a group of its own)."""
    groups: list[list[_Piece]] = []
    size = 0
    for piece in pieces:
        if not groups or size + len(piece.payload) > SEGMENT_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(piece)
        size += len(piece.payload)
    return groups


def _compact_classifier(conn: Connection, obj: ObjectRow) -> None:
    cached = current_object(conn, obj).classifiers[obj.name]
    weights = cached.model.weights
    conn.execute(delete(segments).where(segments.c.kind == obj.kind, segments.c.name == obj.name))
    conn.execute(
        segments.insert().values(
            kind=obj.kind,
            name=obj.name,
            generation=obj.generation,
            first_id=0,
            count=0,
            version=obj.version,
            payload=None if weights is None else to_bytes(weights),
            keys=None,
            meta={"samples_seen": cached.samples_seen, "dtype": None if weights is None else dtype_name(weights.dtype)},
        )
    )


def prune(db: Database, retain_versions: int) -> int:
    """Deletes the entries at or below head - retain_versions that no bootstrap needs; returns how many."""
    with db.writing("pruning") as conn:
        floor = head_of(conn) - retain_versions
        if floor <= 0:
            return 0
        needed = exists().where(
            objects.c.kind == log.c.kind,
            objects.c.name == log.c.name,
            objects.c.live,
            objects.c.generation == log.c.generation,
            log.c.version > objects.c.compacted_version,
        )
        deleted = conn.execute(delete(log).where(log.c.version <= floor, ~needed)).rowcount
        alive = exists().where(
            and_(
                objects.c.kind == segments.c.kind,
                objects.c.name == segments.c.name,
                objects.c.live,
                objects.c.generation == segments.c.generation,
            )
        )
        conn.execute(delete(segments).where(~alive))
    return int(deleted or 0)


def uncompacted(db: Database) -> list[tuple[Kind, str]]:
    """Every live object with entries after its compacted version."""
    with db.reading("compaction scan") as conn:
        rows = conn.execute(
            select(objects.c.kind, objects.c.name).where(
                objects.c.live, objects.c.version > objects.c.compacted_version
            )
        )
        return [(Kind(row.kind), row.name) for row in rows]
