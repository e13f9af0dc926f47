"""Upgrades of an older state database in place, run once at start inside the schema transaction (PostgreSQL:
under the schema advisory lock, so of several workers starting at once one upgrades and the others then find the
new version).

New tables exist already when a step runs (`metadata.create_all` creates what is missing first); a step fills
what the new version keeps and the old one did not. A database newer than this worker is refused
(`SchemaMismatch`): a worker never writes a layout it does not know.

| from | to | step |
|---|---|---|
| 1 | 2 | the idempotency table (created); each live classifier's samples seen into its object row's `size` |
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, select, update

from .errors import SchemaMismatch
from .reader import current_object
from .schema import SCHEMA_VERSION, Kind, ObjectRow, head, objects


def _classifier_sizes(conn: Connection) -> None:
    live = select(objects).where(objects.c.kind == Kind.CLASSIFIER, objects.c.live)
    for row in conn.execute(live).all():
        obj = ObjectRow.from_row(row)
        seen = current_object(conn, obj).classifiers[obj.name].samples_seen
        conn.execute(update(objects).where(objects.c.kind == obj.kind, objects.c.name == obj.name).values(size=seen))


STEPS: dict[int, Callable[[Connection], None]] = {1: _classifier_sizes}  # from version -> its step to the next


def migrate(conn: Connection, found: int) -> None:
    """Runs the steps from schema version `found` to SCHEMA_VERSION and records the new version."""
    if found > SCHEMA_VERSION or any(v not in STEPS for v in range(found, SCHEMA_VERSION)):
        raise SchemaMismatch(found, SCHEMA_VERSION)
    for version in range(found, SCHEMA_VERSION):
        STEPS[version](conn)
    conn.execute(update(head).where(head.c.id == 1).values(schema_version=SCHEMA_VERSION))
