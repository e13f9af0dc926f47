"""The two backends behind one `Database`: PostgreSQL (shared by several processes) and SQLite in a state
directory (one process, held with an OS lock), both through SQLAlchemy 2 Core.

What differs between them lives here and nowhere else:
- PostgreSQL reads a consistent snapshot in REPEATABLE READ; writers are ordered by row locks (SELECT ... FOR
  UPDATE on the object's row, then the head row) and wake other processes with NOTIFY.
- SQLite runs in WAL mode (readers never block the writer) with the BEGIN that SQLAlchemy's pysqlite
  documentation recommends, so a read transaction is one snapshot too; FOR UPDATE does not exist there, so a
  process-wide lock orders this process's writers (the directory lock makes it the only process).
Driver errors that a retry may cure (connection refused or dropped, a restart, lock timeouts) become
`StoreUnavailable`; everything else propagates unchanged, because hiding a bug as "retry later" helps nobody.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Insert, create_engine, event, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from .dirlock import DirectoryLock
from .errors import StoreUnavailable
from .schema import NOTIFY_CHANNEL, SCHEMA_VERSION, head, metadata

POSTGRESQL = "postgresql"
SQLITE = "sqlite"
DATABASE_FILE = "state.db"
CONNECT_TIMEOUT_SECONDS = 5  # how long a connection attempt may take before the store counts as unavailable
SCHEMA_LOCK_KEY = 0x6864635F7374  # pg_advisory_xact_lock key serialising concurrent schema creation
LISTENER_APPLICATION_NAME = "hdc-state-listener"


def parse_postgres_url(value: str) -> URL:
    """postgresql://, postgres:// or postgresql+psycopg:// (psycopg 3) with a database name."""
    try:
        url = make_url(value.strip())
    except ArgumentError:
        raise ValueError(
            f"database_url is not a database URL: {value!r} (expected postgresql+psycopg://user@host/db)"
        ) from None
    backend, _, driver = url.drivername.partition("+")
    if backend not in ("postgresql", "postgres") or driver not in ("", "psycopg"):
        raise ValueError(
            f"database_url must be a postgresql+psycopg:// URL (psycopg 3), got "
            f"{url.render_as_string(hide_password=True)}"
        )
    url = url.set(drivername="postgresql+psycopg")
    if not url.database:
        raise ValueError(f"database_url names no database: {url.render_as_string(hide_password=True)}")
    return url


@dataclass
class Database:
    engine: Engine
    backend: str  # POSTGRESQL or SQLITE
    description: str  # the URL without its password, or the state directory
    listen_conninfo: str | None  # PostgreSQL: the libpq URI a LISTEN connection uses
    directory_lock: DirectoryLock | None = None

    def __post_init__(self) -> None:
        self._write_lock = threading.Lock() if self.backend == SQLITE else None

    @classmethod
    def postgres(cls, database_url: str) -> "Database":
        url = parse_postgres_url(database_url)
        engine = create_engine(
            url,
            pool_pre_ping=True,
            pool_size=4,
            max_overflow=8,
            connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS, "application_name": "hdc-state"},
        )
        conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        database = cls(engine, POSTGRESQL, url.render_as_string(hide_password=True), conninfo)
        database._create_schema()
        return database

    @classmethod
    def sqlite(cls, state_dir: str) -> "Database":
        lock = DirectoryLock(state_dir)
        try:
            path = os.path.join(lock.directory, DATABASE_FILE)
            engine = create_engine(f"sqlite:///{path}", connect_args={"check_same_thread": False, "timeout": 30})
            event.listen(engine, "connect", _sqlite_connect)
            event.listen(engine, "begin", _sqlite_begin)
            database = cls(engine, SQLITE, lock.directory, None, lock)
            database._create_schema()
        except BaseException:
            lock.release()
            raise
        return database

    def close(self) -> None:
        self.engine.dispose()
        if self.directory_lock is not None:
            self.directory_lock.release()

    @contextlib.contextmanager
    def reading(self, operation: str) -> Iterator[Connection]:
        """One consistent snapshot of the whole store for the duration of the block."""
        with translate_errors(operation), self.engine.connect() as conn:
            if self.backend == POSTGRESQL:
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def reading_one_statement(self, operation: str) -> Iterator[Connection]:
        """For a block that runs a single SELECT: one statement is one snapshot by itself, so PostgreSQL runs it
        without a transaction (no BEGIN and COMMIT round trips); SQLite as `reading`."""
        if self.backend != POSTGRESQL:
            with self.reading(operation) as conn:
                yield conn
            return
        with translate_errors(operation), self.engine.connect() as conn:
            yield conn.execution_options(isolation_level="AUTOCOMMIT")

    @contextlib.contextmanager
    def writing(self, operation: str) -> Iterator[Connection]:
        """One transaction, committed when the block ends without an exception (then, and only then, the
        write exists)."""
        with translate_errors(operation), self._process_lock(), self.engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def _process_lock(self) -> Iterator[None]:
        if self._write_lock is None:
            yield
            return
        with self._write_lock:
            yield

    def insert_or_ignore(self, table: Any, values: dict[str, Any]) -> Insert:
        """INSERT that does nothing when the primary key exists (and, on PostgreSQL, waits for a concurrent
        insert of the same key to commit or roll back first)."""
        dialect_insert = postgresql.insert if self.backend == POSTGRESQL else sqlite.insert
        return dialect_insert(table).values(**values).on_conflict_do_nothing()

    def notify(self, conn: Connection, version: int) -> None:
        """PostgreSQL: NOTIFY the version; delivered to listeners at COMMIT, never for a rolled-back write."""
        if self.backend == POSTGRESQL:
            conn.execute(select(func.pg_notify(NOTIFY_CHANNEL, str(version))))

    def _create_schema(self) -> None:
        with self.writing("schema creation") as conn:
            if self.backend == POSTGRESQL:  # several workers starting at once create the tables once
                conn.execute(select(func.pg_advisory_xact_lock(SCHEMA_LOCK_KEY)))
            metadata.create_all(conn)
            found = conn.execute(select(head.c.schema_version).where(head.c.id == 1)).scalar()
            if found is None:
                conn.execute(insert(head).values(id=1, version=0, schema_version=SCHEMA_VERSION))
            elif found != SCHEMA_VERSION:
                # imported here: migrations read the log through reader.py, which imports this module
                from .migrations import migrate

                migrate(conn, int(found))


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite's own transaction handling is switched off so that SQLAlchemy's BEGIN (below) starts every
    # transaction, reads included (SQLAlchemy's pysqlite documentation, "Serializable isolation").
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN")


@contextlib.contextmanager
def translate_errors(operation: str) -> Iterator[None]:
    """Turns the transient database errors raised inside the block into `StoreUnavailable`."""
    try:
        yield
    except (OperationalError, InterfaceError, PoolTimeout) as exc:
        raise StoreUnavailable(operation, _reason(exc)) from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise StoreUnavailable(operation, _reason(exc)) from exc
        raise


def _reason(exc: Exception) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
