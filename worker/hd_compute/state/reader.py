"""Reading the store: the log after a version (incremental catch-up) and the whole state at the head (bootstrap).

Both read one consistent snapshot. Because versions are handed out in commit order without gaps, a snapshot
with head H holds every entry <= H, so the entries after a version V come back as V+1, V+2, ... unless some were
pruned; a gap is reported (`LogSlice.complete` False) and the reader reloads from the compacted segments.
Large rows (segments, adds) are streamed, so a bootstrap holds one segment's bytes at a time besides the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sqlalchemy import Connection, and_, func, select

from .cache import StateCache
from .database import Database
from .schema import Entry, ObjectRow, Segment, head, log, objects, segments

STREAM_ROWS = 4  # rows buffered while streaming segments and log entries (each may be megabytes)


@dataclass(frozen=True)
class LogSlice:
    head: int  # the newest committed version in the snapshot read
    entries: list[Entry]  # consecutive versions after the one asked for, oldest first
    complete: bool  # False: entries after the version asked for were pruned; reload from the segments


def read_since(db: Database, version: int, limit: int, budget: int) -> LogSlice:
    """The head and up to `limit` entries after `version`, in one statement (one snapshot, one round trip),
    stopping after the entry that brings the payloads to `budget` bytes (the first entry always comes)."""
    size = func.coalesce(func.length(log.c.payload), 0)
    window = (
        select(log, size.label("size"), func.sum(size).over(order_by=log.c.version).label("running"))
        .where(log.c.version > version)
        .order_by(log.c.version)
        .limit(limit)
        .subquery("window")
    )
    query = (
        select(head.c.version.label("head_version"), window)
        .select_from(head.outerjoin(window, window.c.running - window.c.size < budget))
        .where(head.c.id == 1)
        .order_by(window.c.version)
    )
    with db.reading_one_statement("log read") as conn:
        rows = conn.execute(query).all()
    head_version = int(rows[0].head_version)
    entries = [Entry.from_row(row) for row in rows if row.version is not None]
    consecutive = all(e.version == version + 1 + i for i, e in enumerate(entries))
    complete = consecutive and (bool(entries) or head_version <= version)
    return LogSlice(head_version, entries, complete)


def load_cache(db: Database, device: torch.device) -> StateCache:
    """Every live object at the head: its segments, then its entries after them."""
    with db.reading("bootstrap") as conn:
        cache = StateCache(device)
        head_version = head_of(conn)
        for row in conn.execute(select(objects).where(objects.c.live).order_by(objects.c.kind, objects.c.name)):
            load_object(conn, cache, ObjectRow.from_row(row))
        replay = (
            select(log)
            .join(
                objects,
                and_(
                    objects.c.kind == log.c.kind, objects.c.name == log.c.name, objects.c.generation == log.c.generation
                ),
            )
            .where(objects.c.live, log.c.version > objects.c.compacted_version)
            .order_by(log.c.version)
        )
        for row in conn.execute(replay.execution_options(yield_per=STREAM_ROWS)):
            cache.apply(Entry.from_row(row))
        cache.applied = head_version
    return cache


def load_object(conn: Connection, cache: StateCache, obj: ObjectRow) -> None:
    """One object into `cache` as of its compacted version (its entries after that are not applied)."""
    query = (
        select(segments)
        .where(segments.c.kind == obj.kind, segments.c.name == obj.name, segments.c.generation == obj.generation)
        .order_by(segments.c.first_id)
    )
    rows = conn.execute(query.execution_options(yield_per=1))
    cache.load(obj, (Segment.from_row(row) for row in rows))


def object_entries(conn: Connection, obj: ObjectRow) -> list[Entry]:
    """The object's entries after its compacted version, oldest first."""
    query = (
        select(log)
        .where(
            log.c.kind == obj.kind,
            log.c.name == obj.name,
            log.c.generation == obj.generation,
            log.c.version > obj.compacted_version,
        )
        .order_by(log.c.version)
    )
    return [Entry.from_row(row) for row in conn.execute(query)]


def current_object(conn: Connection, obj: ObjectRow) -> StateCache:
    """A CPU cache holding only `obj`, as of its newest entry."""
    cache = StateCache(torch.device("cpu"))
    load_object(conn, cache, obj)
    for entry in object_entries(conn, obj):
        cache.apply(entry)
    return cache


def head_of(conn: Connection) -> int:
    return int(conn.execute(select(head.c.version).where(head.c.id == 1)).scalar_one())
